//! Analytic shapes with approximate signed distances (mm, negative inside), the tissues that
//! fill them, and the painted items a phantom is made of.

use crate::rng::Rng;

/// Patient coordinates in mm: x to the patient's left, y to posterior, z to superior (LPS).
pub type P3 = [f64; 3];

/// A deformed ellipsoid: local frame from a rotation, radii, and a smooth radial deformation
/// (low-order harmonics of the direction), so that every case gets its own organ shape.
#[derive(Clone, Debug)]
pub struct Ellipsoid {
    pub center: P3,
    /// World-to-local rotation (rows are the local axes).
    pub rot: [[f64; 3]; 3],
    pub radii: P3,
    /// Coefficients of x, y, z, xy, yz, xz, x^2-y^2, 3z^2-1, x^3, y^3 of the unit direction.
    pub bumps: [f64; 10],
    inv_r: P3,
    /// Largest radial deformation over all directions (bound on `delta`).
    max_delta: f64,
    min_r: f64,
}

impl Ellipsoid {
    /// An ellipsoid rotated by `yaw` about z, then `pitch` about the local x axis (radians),
    /// with deformations of relative size up to `wobble`.
    pub fn new(center: P3, radii: P3, yaw: f64, pitch: f64, wobble: f64, rng: &mut Rng) -> Ellipsoid {
        let (cy, sy) = (yaw.cos(), yaw.sin());
        let (cp, sp) = (pitch.cos(), pitch.sin());
        // Local axes in world coordinates: after yaw, ex = (cy, sy, 0), ey = (-sy, cy, 0), then
        // pitch about ex tilts ey and ez.
        let ex = [cy, sy, 0.0];
        let ey = [-sy * cp, cy * cp, sp];
        let ez = [sy * sp, -cy * sp, cp];
        let mut bumps = [0.0; 10];
        for (k, b) in bumps.iter_mut().enumerate() {
            // Odd (shifting) terms a little weaker than the shaping ones.
            let amp = if k < 3 { 0.5 * wobble } else { wobble };
            *b = rng.range(-amp, amp);
        }
        Ellipsoid::from_parts(center, [ex, ey, ez], radii, bumps)
    }

    /// An ellipsoid from its frame, radii and deformation coefficients.
    pub fn from_parts(center: P3, rot: [[f64; 3]; 3], radii: P3, bumps: [f64; 10]) -> Ellipsoid {
        // Largest magnitude of each basis function on the unit sphere.
        const BASIS_MAX: [f64; 10] = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 1.0, 2.0, 1.0, 1.0];
        let max_delta = bumps.iter().zip(BASIS_MAX).map(|(b, m)| b.abs() * m).sum();
        Ellipsoid {
            center,
            rot,
            radii,
            bumps,
            inv_r: radii.map(|r| 1.0 / r),
            max_delta,
            min_r: radii[0].min(radii[1]).min(radii[2]),
        }
    }

    /// The same shape with radii shrunk by `mm` (a lumen inside a wall).
    pub fn shrunk(&self, mm: f64) -> Ellipsoid {
        Ellipsoid::from_parts(self.center, self.rot, self.radii.map(|r| (r - mm).max(0.5)), self.bumps)
    }

    fn dist(&self, p: P3, cut: f64) -> f64 {
        let d = [p[0] - self.center[0], p[1] - self.center[1], p[2] - self.center[2]];
        let row = |r: &[f64; 3]| r[0] * d[0] + r[1] * d[1] + r[2] * d[2];
        let l = [row(&self.rot[0]), row(&self.rot[1]), row(&self.rot[2])];
        let ir = self.inv_r;
        let q = [l[0] * ir[0], l[1] * ir[1], l[2] * ir[2]];
        let f = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt();
        // |grad f| <= 1 / min_r, so the distance is at least this: reject far points early.
        let lower = (f - 1.0 - self.max_delta) * self.min_r;
        if lower > cut {
            return lower;
        }
        if f < 1e-9 {
            return -self.radii[0].min(self.radii[1]).min(self.radii[2]);
        }
        let u = [q[0] / f, q[1] / f, q[2] / f];
        let b = &self.bumps;
        let delta = b[0] * u[0]
            + b[1] * u[1]
            + b[2] * u[2]
            + b[3] * u[0] * u[1]
            + b[4] * u[1] * u[2]
            + b[5] * u[0] * u[2]
            + b[6] * (u[0] * u[0] - u[1] * u[1])
            + b[7] * (3.0 * u[2] * u[2] - 1.0)
            + b[8] * u[0] * u[0] * u[0]
            + b[9] * u[1] * u[1] * u[1];
        // First-order distance: (f - surface) / |grad f|.
        let g = ((q[0] * ir[0]).powi(2) + (q[1] * ir[1]).powi(2) + (q[2] * ir[2]).powi(2)).sqrt() / f;
        (f - (1.0 + delta)) / g.max(1e-9)
    }

    /// Half-extent along each world axis of the (deformed) ellipsoid.
    fn extent(&self) -> P3 {
        [0, 1, 2].map(|w| {
            let e: f64 = (0..3).map(|k| (self.rot[k][w] * self.radii[k]).powi(2)).sum();
            e.sqrt() * (1.0 + self.max_delta)
        })
    }
}

/// A capsule from `a` to `b` with radius going from `ra` to `rb`; `zscale` > 1 stretches its
/// cross-section along z (flat bones, a mandible taller than thick).
#[derive(Clone, Debug)]
pub struct Capsule {
    pub a: P3,
    pub b: P3,
    pub ra: f64,
    pub rb: f64,
    pub zscale: f64,
}

impl Capsule {
    fn dist(&self, p: P3) -> f64 {
        let s = 1.0 / self.zscale;
        let pa = [p[0] - self.a[0], p[1] - self.a[1], (p[2] - self.a[2]) * s];
        let ba = [
            self.b[0] - self.a[0],
            self.b[1] - self.a[1],
            (self.b[2] - self.a[2]) * s,
        ];
        let bb = ba[0] * ba[0] + ba[1] * ba[1] + ba[2] * ba[2];
        let t = if bb > 0.0 {
            ((pa[0] * ba[0] + pa[1] * ba[1] + pa[2] * ba[2]) / bb).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let d = [pa[0] - t * ba[0], pa[1] - t * ba[1], pa[2] - t * ba[2]];
        (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt() - (self.ra + t * (self.rb - self.ra))
    }
}

/// A capsule with its per-point constants precomputed (what [`Item::new`] paints).
#[derive(Clone, Debug)]
pub struct Segment {
    a: P3,
    /// b - a, with z divided by `zscale`.
    ba: P3,
    inv_bb: f64,
    inv_zscale: f64,
    ra: f64,
    dr: f64,
    rmax: f64,
}

impl Segment {
    fn new(c: &Capsule) -> Segment {
        let inv_zscale = 1.0 / c.zscale;
        let ba = [c.b[0] - c.a[0], c.b[1] - c.a[1], (c.b[2] - c.a[2]) * inv_zscale];
        let bb = ba[0] * ba[0] + ba[1] * ba[1] + ba[2] * ba[2];
        Segment {
            a: c.a,
            ba,
            inv_bb: if bb > 0.0 { 1.0 / bb } else { 0.0 },
            inv_zscale,
            ra: c.ra,
            dr: c.rb - c.ra,
            rmax: c.ra.max(c.rb),
        }
    }

    #[inline]
    fn dist(&self, p: P3, cut: f64) -> f64 {
        let pa = [p[0] - self.a[0], p[1] - self.a[1], (p[2] - self.a[2]) * self.inv_zscale];
        let ba = self.ba;
        let t = ((pa[0] * ba[0] + pa[1] * ba[1] + pa[2] * ba[2]) * self.inv_bb).clamp(0.0, 1.0);
        let d = [pa[0] - t * ba[0], pa[1] - t * ba[1], pa[2] - t * ba[2]];
        let d2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
        // Far from the axis: any value above `cut` will do, and needs no square root.
        let reach = self.rmax + cut.max(0.0);
        if d2 > reach * reach {
            return reach - self.rmax + 1.0;
        }
        d2.sqrt() - (self.ra + t * self.dr)
    }
}

/// Where a point lies relative to the body wall: `depth` inside the skin and `wall`, the depth
/// at which the muscle wall ends there (both mm).
#[derive(Clone, Copy, Debug, Default)]
pub struct Local {
    pub depth: f64,
    pub wall: f64,
}

/// Shapes and their combinations.
#[derive(Clone, Debug)]
pub enum Shape {
    Ellipsoid(Ellipsoid),
    Capsule(Capsule),
    /// A prepared capsule (see [`Shape::prepared`]).
    Segment(Segment),
    /// Vertical elliptic cylinder between `z0` and `z1`.
    Cylinder {
        center: [f64; 2],
        radii: [f64; 2],
        z0: f64,
        z1: f64,
    },
    /// Deeper than `inset` mm inside the muscle wall (negative: into the wall).
    Cavity {
        inset: f64,
    },
    /// Between `inner` and `outer` mm inside the skin.
    Band {
        inner: f64,
        outer: f64,
    },
    /// `n . p < offset`.
    HalfSpace {
        n: P3,
        offset: f64,
    },
    /// A plate under the patient: top surface `y = top + (x - cx)^2 / (2 curve)`, `thick` mm
    /// thick, `half` mm to each side of `cx`, between `z0` and `z1`.
    Table {
        cx: f64,
        top: f64,
        curve: f64,
        thick: f64,
        half: f64,
        z0: f64,
        z1: f64,
    },
    Union(Vec<Shape>),
    Intersect(Box<Shape>, Box<Shape>),
    Subtract(Box<Shape>, Box<Shape>),
}

impl Shape {
    /// Approximate signed distance (mm). Where the true value exceeds `cut`, any value above
    /// `cut` may be returned (so that painting can skip work outside the shape).
    pub fn dist(&self, p: P3, at: Local, cut: f64) -> f64 {
        match self {
            Shape::Ellipsoid(e) => e.dist(p, cut),
            Shape::Capsule(c) => c.dist(p),
            Shape::Segment(s) => s.dist(p, cut),
            Shape::Cylinder { center, radii, z0, z1 } => {
                let dx = (p[0] - center[0]) / radii[0];
                let dy = (p[1] - center[1]) / radii[1];
                let f = (dx * dx + dy * dy).sqrt();
                let r = radii[0].min(radii[1]);
                let side = (f - 1.0) * r;
                let ends = (z0 - p[2]).max(p[2] - z1);
                side.max(ends)
            }
            Shape::Cavity { inset } => at.wall + inset - at.depth,
            Shape::Band { inner, outer } => (inner - at.depth).max(at.depth - outer),
            Shape::HalfSpace { n, offset } => n[0] * p[0] + n[1] * p[1] + n[2] * p[2] - offset,
            Shape::Table {
                cx,
                top,
                curve,
                thick,
                half,
                z0,
                z1,
            } => {
                let dx = p[0] - cx;
                let surface = top + dx * dx / (2.0 * curve);
                (surface - p[1])
                    .max(p[1] - surface - thick)
                    .max(dx.abs() - half)
                    .max(z0 - p[2])
                    .max(p[2] - z1)
            }
            Shape::Union(parts) => parts.iter().map(|s| s.dist(p, at, cut)).fold(f64::INFINITY, f64::min),
            Shape::Intersect(a, b) => {
                // The cheap side first: most points are rejected by it.
                let (first, second) = if b.is_cheap() { (b, a) } else { (a, b) };
                let d1 = first.dist(p, at, cut);
                if d1 > cut {
                    return d1;
                }
                d1.max(second.dist(p, at, cut))
            }
            Shape::Subtract(a, b) => {
                let da = a.dist(p, at, cut);
                if da > cut {
                    return da;
                }
                da.max(-b.dist(p, at, f64::INFINITY))
            }
        }
    }

    /// The same shape with its capsules precomputed for fast evaluation.
    pub fn prepared(self) -> Shape {
        match self {
            Shape::Capsule(c) => Shape::Segment(Segment::new(&c)),
            Shape::Union(parts) => Shape::Union(parts.into_iter().map(Shape::prepared).collect()),
            Shape::Intersect(a, b) => Shape::Intersect(Box::new(a.prepared()), Box::new(b.prepared())),
            Shape::Subtract(a, b) => Shape::Subtract(Box::new(a.prepared()), Box::new(b.prepared())),
            other => other,
        }
    }

    fn is_cheap(&self) -> bool {
        matches!(
            self,
            Shape::Cavity { .. } | Shape::Band { .. } | Shape::HalfSpace { .. }
        )
    }

    /// A box (lo, hi) outside which the shape is empty; infinite for unbounded shapes.
    pub fn bounds(&self) -> (P3, P3) {
        const INF: P3 = [f64::INFINITY; 3];
        const NEG: P3 = [f64::NEG_INFINITY; 3];
        match self {
            Shape::Ellipsoid(e) => {
                let r = e.extent();
                (
                    [0, 1, 2].map(|a| e.center[a] - r[a]),
                    [0, 1, 2].map(|a| e.center[a] + r[a]),
                )
            }
            Shape::Capsule(c) => {
                let r = c.ra.max(c.rb);
                let rz = r * c.zscale;
                let lo = [c.a[0].min(c.b[0]) - r, c.a[1].min(c.b[1]) - r, c.a[2].min(c.b[2]) - rz];
                let hi = [c.a[0].max(c.b[0]) + r, c.a[1].max(c.b[1]) + r, c.a[2].max(c.b[2]) + rz];
                (lo, hi)
            }
            Shape::Segment(g) => {
                let zs = 1.0 / g.inv_zscale;
                let b = [g.a[0] + g.ba[0], g.a[1] + g.ba[1], g.a[2] + g.ba[2] * zs];
                let (r, rz) = (g.rmax, g.rmax * zs);
                (
                    [g.a[0].min(b[0]) - r, g.a[1].min(b[1]) - r, g.a[2].min(b[2]) - rz],
                    [g.a[0].max(b[0]) + r, g.a[1].max(b[1]) + r, g.a[2].max(b[2]) + rz],
                )
            }
            Shape::Cylinder { center, radii, z0, z1 } => (
                [center[0] - radii[0], center[1] - radii[1], *z0],
                [center[0] + radii[0], center[1] + radii[1], *z1],
            ),
            Shape::Table {
                cx,
                top,
                curve,
                thick,
                half,
                z0,
                z1,
            } => (
                [cx - half, *top, *z0],
                [cx + half, top + thick + half * half / (2.0 * curve), *z1],
            ),
            Shape::Cavity { .. } | Shape::Band { .. } | Shape::HalfSpace { .. } => (NEG, INF),
            Shape::Union(parts) => parts.iter().map(Shape::bounds).fold((INF, NEG), |(lo, hi), (l, h)| {
                ([0, 1, 2].map(|a| lo[a].min(l[a])), [0, 1, 2].map(|a| hi[a].max(h[a])))
            }),
            Shape::Intersect(a, b) => {
                let ((la, ha), (lb, hb)) = (a.bounds(), b.bounds());
                ([0, 1, 2].map(|i| la[i].max(lb[i])), [0, 1, 2].map(|i| ha[i].min(hb[i])))
            }
            Shape::Subtract(a, _) => a.bounds(),
        }
    }

    /// Shortcuts.
    pub fn intersect(self, other: Shape) -> Shape {
        Shape::Intersect(Box::new(self), Box::new(other))
    }
    pub fn subtract(self, other: Shape) -> Shape {
        Shape::Subtract(Box::new(self), Box::new(other))
    }
}

/// A tissue: base HU, texture amplitudes (fine ~3 mm, coarse ~12 mm grain), an optional rim
/// (a wall or cortex of `rim` mm at `rim_hu`), and an optional gradient along y (HU per mm from
/// `y_ref`, e.g. denser dependent lung).
#[derive(Clone, Copy, Debug)]
pub struct Tissue {
    pub hu: f32,
    pub fine: f32,
    pub coarse: f32,
    pub rim: f32,
    pub rim_hu: f32,
    pub grad_y: f32,
    pub y_ref: f32,
}

impl Tissue {
    pub const fn new(hu: f32, fine: f32, coarse: f32) -> Tissue {
        Tissue {
            hu,
            fine,
            coarse,
            rim: 0.0,
            rim_hu: 0.0,
            grad_y: 0.0,
            y_ref: 0.0,
        }
    }
    /// With a rim of `mm` at `hu`.
    pub const fn rim(self, mm: f32, hu: f32) -> Tissue {
        Tissue {
            rim: mm,
            rim_hu: hu,
            ..self
        }
    }
    /// With a gradient along y.
    pub const fn gradient(self, per_mm: f32, y_ref: f32) -> Tissue {
        Tissue {
            grad_y: per_mm,
            y_ref,
            ..self
        }
    }
    /// HU at signed distance `d` inside the shape, with textures and position.
    #[inline]
    pub fn value(&self, d: f64, px: f64, fine: f32, coarse: f32, y: f64) -> f32 {
        let mut v = self.hu;
        if self.rim > 0.0 {
            let inner = ((-d - self.rim as f64) / px + 0.5).clamp(0.0, 1.0) as f32;
            v = self.rim_hu + inner * (self.hu - self.rim_hu);
        }
        v + self.fine * fine + self.coarse * coarse + self.grad_y * (y as f32 - self.y_ref)
    }
}

/// What painting does to the label map where the item covers a voxel by half or more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelMode {
    Set(u8),
    Keep,
    Clear,
}

/// A shape filled with a tissue, painted over what lies below it.
#[derive(Clone, Debug)]
pub struct Item {
    pub shape: Shape,
    pub tissue: Tissue,
    pub label: LabelMode,
    pub lo: P3,
    pub hi: P3,
}

impl Item {
    pub fn new(shape: Shape, tissue: Tissue, label: LabelMode) -> Item {
        let shape = shape.prepared();
        let (lo, hi) = shape.bounds();
        Item {
            shape,
            tissue,
            label,
            lo,
            hi,
        }
    }
}

/// Adds a tube along `points` with `radii` as capsules. A tissue with a rim is painted as two
/// passes (wall, then lumen) so that the joints between capsules show no wall across the lumen.
pub fn add_tube(items: &mut Vec<Item>, points: &[P3], radii: &[f64], zscale: f64, tissue: Tissue, label: LabelMode) {
    let segments = |shrink: f64| {
        points
            .windows(2)
            .zip(radii.windows(2))
            .map(move |(p, r)| Capsule {
                a: p[0],
                b: p[1],
                ra: (r[0] - shrink).max(0.3),
                rb: (r[1] - shrink).max(0.3),
                zscale,
            })
            .collect::<Vec<_>>()
    };
    if tissue.rim > 0.0 {
        let wall = Tissue::new(tissue.rim_hu, tissue.fine, tissue.coarse);
        for c in segments(0.0) {
            items.push(Item::new(Shape::Capsule(c), wall, label));
        }
        let lumen = Tissue { rim: 0.0, ..tissue };
        for c in segments(tissue.rim as f64) {
            items.push(Item::new(Shape::Capsule(c), lumen, label));
        }
    } else {
        for c in segments(0.0) {
            items.push(Item::new(Shape::Capsule(c), tissue, label));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ellipsoid_distance_has_the_right_sign_and_scale() {
        let mut rng = Rng::new(1);
        let e = Ellipsoid::new([10.0, 0.0, 0.0], [20.0, 10.0, 5.0], 0.0, 0.0, 0.0, &mut rng);
        let s = Shape::Ellipsoid(e);
        assert!(s.dist([10.0, 0.0, 0.0], Local::default(), f64::INFINITY) < -4.9);
        assert!((s.dist([32.0, 0.0, 0.0], Local::default(), f64::INFINITY) - 2.0).abs() < 1e-9);
        assert!((s.dist([10.0, 0.0, 4.0], Local::default(), f64::INFINITY) + 1.0).abs() < 1e-9);
    }

    #[test]
    fn capsule_distance_along_and_across() {
        let c = Shape::Capsule(Capsule {
            a: [0.0, 0.0, 0.0],
            b: [0.0, 0.0, 10.0],
            ra: 2.0,
            rb: 2.0,
            zscale: 1.0,
        });
        assert!((c.dist([5.0, 0.0, 5.0], Local::default(), f64::INFINITY) - 3.0).abs() < 1e-12);
        assert!((c.dist([0.0, 0.0, 14.0], Local::default(), f64::INFINITY) - 2.0).abs() < 1e-12);
    }
}
