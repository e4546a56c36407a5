//! Rendering a phantom scene to HU and labels, slice by slice: body outline and wall layers,
//! then the items in painting order, each with partial-volume edges; then the reconstruction
//! blur and CT noise.

use super::field::{ValueNoise, add_ct_noise, blur121};
use super::shape::{Item, LabelMode, Local, P3, Tissue};
use crate::rng::Rng;

/// The body outline at one height: half-width `a`, anterior and posterior half-depths, and
/// the subcutaneous fat and muscle wall thickness (mm).
#[derive(Clone, Copy, Debug)]
pub struct BodyKey {
    pub z: f64,
    pub a: f64,
    pub b_ant: f64,
    pub b_post: f64,
    pub fat: f64,
    pub muscle: f64,
}

/// The body: a smooth outline varying with height, its wall layers and what fills it.
#[derive(Clone, Debug)]
pub struct Body {
    pub cx: f64,
    pub cy: f64,
    /// Sorted by z; interpolated smoothly between keys.
    pub keys: Vec<BodyKey>,
    /// Outline harmonics: cos/sin of 2, 3 and 4 times the angle (relative amplitudes).
    pub harmonics: [f64; 6],
    /// 0 = elliptic, 1 = box-like posterior half (flat back on the table).
    pub flat_back: f64,
    pub skin: Tissue,
    pub fat: Tissue,
    pub muscle: Tissue,
    pub inner: Tissue,
}

impl Body {
    /// The outline parameters at height `z`.
    pub fn key(&self, z: f64) -> BodyKey {
        let k = &self.keys;
        if z <= k[0].z {
            return k[0];
        }
        for w in k.windows(2) {
            if z <= w[1].z {
                let t = (z - w[0].z) / (w[1].z - w[0].z).max(1e-9);
                let t = t * t * (3.0 - 2.0 * t);
                let l = |a: f64, b: f64| a + t * (b - a);
                return BodyKey {
                    z,
                    a: l(w[0].a, w[1].a),
                    b_ant: l(w[0].b_ant, w[1].b_ant),
                    b_post: l(w[0].b_post, w[1].b_post),
                    fat: l(w[0].fat, w[1].fat),
                    muscle: l(w[0].muscle, w[1].muscle),
                };
            }
        }
        k[k.len() - 1]
    }

    /// Distance from the centre to the skin along the unit direction (c, s).
    pub fn radius(&self, key: &BodyKey, c: f64, s: f64) -> f64 {
        let b = if s < 0.0 { key.b_ant } else { key.b_post };
        let ellipse = 1.0 / (c * c / (key.a * key.a) + s * s / (b * b)).sqrt();
        let r = if s > 0.0 && self.flat_back > 0.0 {
            let boxy = (key.a / c.abs().max(1e-9)).min(b / s.abs().max(1e-9));
            // Only the posterior-lateral quadrants flatten, fading toward the flanks.
            let w = self.flat_back * s.min(1.0);
            ellipse + w * (boxy.min(1.3 * ellipse) - ellipse)
        } else {
            ellipse
        };
        let h = &self.harmonics;
        let (c2, s2) = (c * c - s * s, 2.0 * c * s);
        let (c3, s3) = (c * c2 - s * s2, s * c2 + c * s2);
        let (c4, s4) = (c * c3 - s * s3, s * c3 + c * s3);
        r * (1.0 + h[0] * c2 + h[1] * s2 + h[2] * c3 + h[3] * s3 + h[4] * c4 + h[5] * s4)
    }

    /// Subcutaneous fat thickness along (c, s): thicker anteriorly and over the flanks.
    pub fn fat_at(&self, key: &BodyKey, c: f64, s: f64) -> f64 {
        key.fat * (1.0 + 0.35 * (-s).max(0.0) + 0.25 * c.abs() - 0.3 * s.max(0.0))
    }

    /// Muscle wall thickness along (c, s).
    pub fn muscle_at(&self, key: &BodyKey, _c: f64, s: f64) -> f64 {
        key.muscle * (1.0 + 0.2 * (-s).max(0.0))
    }

    /// A point on the skin at height `z` along angle `theta` (0 = patient's left, pi/2 = posterior).
    pub fn skin_point(&self, z: f64, theta: f64) -> (f64, f64) {
        let key = self.key(z);
        let (c, s) = (theta.cos(), theta.sin());
        let r = self.radius(&key, c, s);
        (self.cx + r * c, self.cy + r * s)
    }

    /// Where an (undeformed) point lies relative to the body wall.
    pub fn local(&self, p: P3) -> Local {
        let key = self.key(p[2]);
        let (dx, dy) = (p[0] - self.cx, p[1] - self.cy);
        let r = (dx * dx + dy * dy).sqrt().max(1e-9);
        let (c, s) = (dx / r, dy / r);
        Local {
            depth: self.radius(&key, c, s) - r,
            wall: 2.0 + self.fat_at(&key, c, s) + self.muscle_at(&key, c, s),
        }
    }

    /// Depth of the inner surface of the muscle wall along angle `theta` at height `z`.
    pub fn wall_depth(&self, z: f64, theta: f64) -> f64 {
        let key = self.key(z);
        let (c, s) = (theta.cos(), theta.sin());
        2.0 + self.fat_at(&key, c, s) + self.muscle_at(&key, c, s)
    }
}

/// A phantom: body, items in painting order, noise level.
pub struct Scene {
    pub body: Body,
    pub items: Vec<Item>,
    /// CT noise standard deviation (HU).
    pub noise_sigma: f32,
    /// Amplitude (mm) of the smooth deformation applied to every shape.
    pub warp_mm: f64,
}

/// The voxel grid in patient coordinates: `x_i = x0 + i * px`, `y_j = y0 + j * px`,
/// `z_k = z0 + k * dz`.
#[derive(Clone, Copy, Debug)]
pub struct Grid {
    pub nx: usize,
    pub ny: usize,
    pub nz: usize,
    pub px: f64,
    pub dz: f64,
    pub x0: f64,
    pub y0: f64,
    pub z0: f64,
}

/// Lowest and highest values the scanner stores.
pub const HU_MIN: f32 = -1024.0;
pub const HU_MAX: f32 = 3071.0;
const AIR: f32 = -1000.0;

/// Fraction of a pixel covered at signed distance `d` (mm); `inv_px` = 1 / pixel size.
#[inline]
fn coverage(d: f64, inv_px: f64) -> f32 {
    (0.5 - d * inv_px).clamp(0.0, 1.0) as f32
}

/// Renders HU (rounded to integers, as stored by scanners) and labels, (z, y, x).
pub fn render(scene: &Scene, grid: &Grid, rng: &mut Rng) -> (Vec<f32>, Vec<u8>) {
    let (nx, ny, nz, px) = (grid.nx, grid.ny, grid.nz, grid.px);
    let inv_px = 1.0 / px;
    let xs: Vec<f64> = (0..nx).map(|i| grid.x0 + i as f64 * px).collect();
    let ys: Vec<f64> = (0..ny).map(|j| grid.y0 + j as f64 * px).collect();
    let lo = [xs[0] - 20.0, ys[0] - 20.0, grid.z0 - 20.0];
    let hi = [
        xs[nx - 1] + 20.0,
        ys[ny - 1] + 20.0,
        grid.z0 + nz as f64 * grid.dz + 20.0,
    ];
    let mut frng = rng.fork(1);
    let fine = ValueNoise::new(&mut frng, lo, hi, 2.5);
    let coarse = ValueNoise::new(&mut frng, lo, hi, 11.0);
    let warp_x = ValueNoise::new(&mut frng, lo, hi, 60.0);
    let warp_y = ValueNoise::new(&mut frng, lo, hi, 60.0);
    let n2 = nx * ny;
    let mut hu = vec![0f32; nz * n2];
    let mut lab = vec![0u8; nz * n2];
    let (mut tf, mut tc, mut wx, mut wy) = (vec![0f32; n2], vec![0f32; n2], vec![0f32; n2], vec![0f32; n2]);
    let mut local = vec![Local::default(); n2];
    let mut px_x = vec![0f64; n2];
    let mut px_y = vec![0f64; n2];
    let wmax = scene.warp_mm;
    let body = &scene.body;
    for k in 0..nz {
        let z = grid.z0 + k as f64 * grid.dz;
        fine.slice_into(&xs, &ys, z, &mut tf);
        coarse.slice_into(&xs, &ys, z, &mut tc);
        warp_x.slice_into(&xs, &ys, z, &mut wx);
        warp_y.slice_into(&xs, &ys, z, &mut wy);
        let key = body.key(z);
        let h = &mut hu[k * n2..(k + 1) * n2];
        let l = &mut lab[k * n2..(k + 1) * n2];
        // Body outline and wall layers.
        for (j, &y0) in ys.iter().enumerate() {
            for (i, &x0) in xs.iter().enumerate() {
                let p = j * nx + i;
                let x = x0 + wmax * wx[p] as f64;
                let y = y0 + wmax * wy[p] as f64;
                px_x[p] = x;
                px_y[p] = y;
                let (dx, dy) = (x - body.cx, y - body.cy);
                let r = (dx * dx + dy * dy).sqrt().max(1e-9);
                let (c, s) = (dx / r, dy / r);
                let dep = body.radius(&key, c, s) - r;
                let fat_end = 2.0 + body.fat_at(&key, c, s);
                let muscle_end = fat_end + body.muscle_at(&key, c, s);
                local[p] = Local {
                    depth: dep,
                    wall: muscle_end,
                };
                let inside = coverage(-dep, inv_px);
                if inside <= 0.0 {
                    h[p] = AIR;
                    continue;
                }
                let (f, g) = (tf[p], tc[p]);
                if dep > muscle_end + px {
                    // Deep inside: every layer boundary is more than a pixel away.
                    h[p] = body.inner.value(muscle_end - dep, px, f, g, y);
                    continue;
                }
                let mut v = body.skin.value(-dep, px, f, g, y);
                v += coverage(2.0 - dep, inv_px) * (body.fat.value(2.0 - dep, px, f, g, y) - v);
                v += coverage(fat_end - dep, inv_px) * (body.muscle.value(fat_end - dep, px, f, g, y) - v);
                v += coverage(muscle_end - dep, inv_px) * (body.inner.value(muscle_end - dep, px, f, g, y) - v);
                h[p] = AIR + inside * (v - AIR);
            }
        }
        // Items, in order.
        for item in &scene.items {
            if z < item.lo[2] || z > item.hi[2] {
                continue;
            }
            let span = |lo: f64, hi: f64, o: f64, n: usize| -> (usize, usize) {
                let a = ((lo - wmax - o) / px).floor().max(0.0);
                let b = ((hi + wmax - o) / px).ceil() + 1.0;
                (a.min(n as f64) as usize, b.clamp(0.0, n as f64) as usize)
            };
            let (i0, i1) = span(item.lo[0], item.hi[0], grid.x0, nx);
            let (j0, j1) = span(item.lo[1], item.hi[1], grid.y0, ny);
            for j in j0..j1 {
                for i in i0..i1 {
                    let p = j * nx + i;
                    let q: P3 = [px_x[p], px_y[p], z];
                    let d = item.shape.dist(q, local[p], 0.5 * px);
                    let a = coverage(d, inv_px);
                    if a <= 0.0 {
                        continue;
                    }
                    let v = item.tissue.value(d, px, tf[p], tc[p], q[1]);
                    h[p] += a * (v - h[p]);
                    if a >= 0.5 {
                        match item.label {
                            LabelMode::Set(n) => l[p] = n,
                            LabelMode::Clear => l[p] = 0,
                            LabelMode::Keep => {}
                        }
                    }
                }
            }
        }
    }
    // Reconstruction point spread in-plane and the slice profile along z.
    blur121(&mut hu, [nz, ny, nx], [true, true, true]);
    // Noise, the scanner's value range, the reconstruction circle.
    let cxp = (nx as f64 - 1.0) / 2.0;
    let cyp = (ny as f64 - 1.0) / 2.0;
    let rcirc = (nx.max(ny) as f64) / 2.0 + 0.5;
    for k in 0..nz {
        let mut nrng = rng.fork(1000 + k as u64);
        let h = &mut hu[k * n2..(k + 1) * n2];
        add_ct_noise(&mut nrng, h, ny, nx, scene.noise_sigma);
        for j in 0..ny {
            for i in 0..nx {
                let v = &mut h[j * nx + i];
                let (dx, dy) = (i as f64 - cxp, j as f64 - cyp);
                *v = if dx * dx + dy * dy > rcirc * rcirc {
                    HU_MIN
                } else {
                    v.round().clamp(HU_MIN, HU_MAX)
                };
            }
        }
    }
    (hu, lab)
}
