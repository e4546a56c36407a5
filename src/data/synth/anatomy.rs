//! Tissues and the anatomy shared by the regions: spine, ribs, back muscles, scanner table.

use std::f64::consts::{FRAC_PI_2, PI};

use super::render::Body;
use super::shape::{Capsule, Item, LabelMode, P3, Shape, Tissue, add_tube};
use crate::rng::Rng;

/// Tissue HU values, with or without intravenous contrast (portal venous phase).
#[derive(Clone, Copy, Debug)]
pub struct Palette {
    pub contrast: bool,
}

impl Palette {
    fn pick(&self, with: f32, without: f32) -> f32 {
        if self.contrast { with } else { without }
    }
    pub fn air(&self) -> Tissue {
        Tissue::new(-1000.0, 0.0, 0.0)
    }
    pub fn fat(&self) -> Tissue {
        Tissue::new(-102.0, 9.0, 7.0)
    }
    pub fn visceral_fat(&self) -> Tissue {
        Tissue::new(-92.0, 14.0, 10.0)
    }
    pub fn skin(&self) -> Tissue {
        Tissue::new(35.0, 5.0, 3.0)
    }
    pub fn muscle(&self) -> Tissue {
        Tissue::new(self.pick(60.0, 50.0), 6.0, 4.0)
    }
    pub fn blood(&self) -> Tissue {
        Tissue::new(self.pick(175.0, 42.0), 3.0, 2.0)
    }
    pub fn vein(&self) -> Tissue {
        Tissue::new(self.pick(150.0, 40.0), 3.0, 2.0)
    }
    pub fn liver(&self) -> Tissue {
        Tissue::new(self.pick(108.0, 60.0), 5.0, 6.0)
    }
    pub fn spleen(&self) -> Tissue {
        Tissue::new(self.pick(118.0, 50.0), 5.0, 4.0)
    }
    pub fn kidney(&self) -> Tissue {
        Tissue::new(self.pick(128.0, 30.0), 5.0, 3.0).rim(5.5, self.pick(190.0, 38.0))
    }
    pub fn pancreas(&self) -> Tissue {
        Tissue::new(self.pick(92.0, 40.0), 16.0, 7.0)
    }
    pub fn bile(&self) -> Tissue {
        Tissue::new(9.0, 2.0, 1.0).rim(1.5, self.pick(75.0, 40.0))
    }
    pub fn bone(&self) -> Tissue {
        Tissue::new(240.0, 55.0, 35.0).rim(1.8, 1000.0)
    }
    pub fn cartilage(&self) -> Tissue {
        Tissue::new(130.0, 20.0, 8.0)
    }
    pub fn disc(&self) -> Tissue {
        Tissue::new(85.0, 8.0, 4.0)
    }
    pub fn csf(&self) -> Tissue {
        Tissue::new(8.0, 3.0, 2.0)
    }
    pub fn cord(&self) -> Tissue {
        Tissue::new(36.0, 3.0, 2.0)
    }
    pub fn fluid(&self) -> Tissue {
        Tissue::new(12.0, 4.0, 3.0)
    }
    /// Lung parenchyma, denser toward the dependent (posterior) side.
    pub fn lung(&self, y_front: f64) -> Tissue {
        Tissue::new(-875.0, 22.0, 16.0).gradient(0.3, y_front as f32)
    }
    /// Bowel content: mixed gas and faeces (mottled).
    pub fn stool(&self) -> Tissue {
        Tissue::new(-250.0, 480.0, 160.0)
    }
}

/// Where the spine sits and how it looks.
pub struct Spine {
    /// Centre of the vertebral bodies (x, y), mm.
    pub x: f64,
    pub y: f64,
    pub z0: f64,
    pub z1: f64,
    /// Height of one vertebra plus its disc.
    pub period: f64,
    /// Phase of the first disc (mm above `z0`).
    pub phase: f64,
    pub body_r: [f64; 2],
    pub canal_r: f64,
    /// The cord ends here (conus); below, the canal holds CSF and nerve roots.
    pub cord_bottom: f64,
    pub cord_label: u8,
    /// Length of the spinous processes and half-span of the transverse processes.
    pub spinous: f64,
    pub transverse: f64,
}

/// Vertebral bodies with discs, canal, cord, laminae and processes.
pub fn add_spine(items: &mut Vec<Item>, s: &Spine, p: &Palette, rng: &mut Rng) {
    let canal_y = s.y + s.body_r[1] + s.canal_r + 1.5;
    // Disc column first, then the vertebral bodies over it.
    items.push(Item::new(
        Shape::Cylinder {
            center: [s.x, s.y],
            radii: [s.body_r[0] * 0.97, s.body_r[1] * 0.97],
            z0: s.z0 - 5.0,
            z1: s.z1 + 5.0,
        },
        p.disc(),
        LabelMode::Keep,
    ));
    let mut z = s.z0 - s.period + s.phase;
    while z < s.z1 + s.period {
        let disc = s.period * rng.range(0.17, 0.22);
        let (vz0, vz1) = (z + disc * 0.5, z + s.period - disc * 0.5);
        let grow = rng.range(0.97, 1.04);
        items.push(Item::new(
            Shape::Cylinder {
                center: [s.x, s.y],
                radii: [s.body_r[0] * grow, s.body_r[1] * grow],
                z0: vz0,
                z1: vz1,
            },
            p.bone(),
            LabelMode::Keep,
        ));
        // Posterior arch in the upper part of each vertebra; processes slope down.
        let (az0, az1) = (vz0 + 0.35 * (vz1 - vz0), vz1 + 0.1 * s.period);
        let zm = 0.5 * (az0 + az1);
        let lamina = |side: f64| Capsule {
            a: [s.x + side * (s.canal_r + 2.0), s.y + s.body_r[1] * 0.7, zm],
            b: [s.x + side * 3.0, canal_y + s.canal_r + 3.0, zm],
            ra: 3.6,
            rb: 3.2,
            zscale: (az1 - az0) / 7.0,
        };
        for side in [-1.0, 1.0] {
            items.push(Item::new(Shape::Capsule(lamina(side)), p.bone(), LabelMode::Keep));
            if s.transverse > 0.0 {
                let tp = Capsule {
                    a: [s.x + side * (s.canal_r + 1.0), canal_y - 2.0, zm],
                    b: [s.x + side * s.transverse, canal_y + 2.0, zm - 2.0],
                    ra: 3.4,
                    rb: 2.6,
                    zscale: 1.2,
                };
                items.push(Item::new(Shape::Capsule(tp), p.bone(), LabelMode::Keep));
            }
        }
        let spinous = Capsule {
            a: [s.x, canal_y + s.canal_r + 2.0, zm],
            b: [s.x, canal_y + s.canal_r + s.spinous, zm - 0.3 * s.spinous],
            ra: 4.0,
            rb: 3.4,
            zscale: 1.6,
        };
        items.push(Item::new(Shape::Capsule(spinous), p.bone(), LabelMode::Keep));
        z += s.period;
    }
    // Canal (CSF) and cord.
    items.push(Item::new(
        Shape::Cylinder {
            center: [s.x, canal_y],
            radii: [s.canal_r * 1.1, s.canal_r],
            z0: s.z0 - 5.0,
            z1: s.z1 + 5.0,
        },
        p.csf(),
        LabelMode::Clear,
    ));
    let cord_r = (s.canal_r * 0.55).min(5.5);
    let top = s.z1 + 5.0;
    if s.cord_bottom < top {
        let bottom = s.cord_bottom.max(s.z0 - 5.0);
        let pts = [
            [s.x, canal_y, bottom],
            [s.x, canal_y - 0.5, 0.5 * (bottom + top)],
            [s.x, canal_y, top],
        ];
        add_tube(
            items,
            &pts,
            &[cord_r * 0.6, cord_r, cord_r],
            1.0,
            p.cord(),
            LabelMode::Set(s.cord_label),
        );
    }
    // Nerve roots of the cauda equina below the conus.
    if s.cord_bottom > s.z0 {
        for k in 0..8 {
            let a = k as f64 / 8.0 * 2.0 * PI;
            let (dx, dy) = (0.5 * s.canal_r * a.cos(), 0.45 * s.canal_r * a.sin());
            let pts = [
                [s.x + dx, canal_y + dy, s.z0 - 5.0],
                [s.x + dx * 0.6, canal_y + dy * 0.6, s.cord_bottom],
            ];
            add_tube(items, &pts, &[1.0, 1.1], 1.0, p.cord(), LabelMode::Keep);
        }
    }
}

/// The deep back muscles on both sides of the spine, following the posterior wall.
pub fn add_back_muscles(items: &mut Vec<Item>, body: &Body, spine: &Spine, z0: f64, z1: f64, p: &Palette) {
    for side in [-1.0, 1.0] {
        let mut pts = Vec::new();
        let mut radii = Vec::new();
        let steps = 6;
        for k in 0..=steps {
            let z = z0 - 10.0 + (z1 - z0 + 20.0) * k as f64 / steps as f64;
            let theta = FRAC_PI_2 - side * 0.28;
            let (_, skin_y) = body.skin_point(z, theta);
            let back = skin_y - body.wall_depth(z, theta) + body.key(z).muscle;
            let front = spine.y + 2.0;
            let cy = 0.5 * (front + back);
            pts.push([spine.x + side * (spine.body_r[0] + 14.0), cy, z]);
            radii.push((0.5 * (back - front)).max(8.0));
        }
        // Wider than deep: two tubes side by side, kept under the subcutaneous fat.
        for dx in [-7.0, 7.0] {
            for (w, r) in pts.windows(2).zip(radii.windows(2)) {
                let c = Capsule {
                    a: [w[0][0] + side * dx, w[0][1], w[0][2]],
                    b: [w[1][0] + side * dx, w[1][1], w[1][2]],
                    ra: r[0],
                    rb: r[1],
                    zscale: 1.0,
                };
                let shape = Shape::Capsule(c).intersect(Shape::Cavity {
                    inset: -body.key(w[0][2]).muscle,
                });
                items.push(Item::new(shape, p.muscle(), LabelMode::Clear));
            }
        }
    }
}

/// Ribs: each leaves the spine at `origins[k]` and follows the inside of the chest wall
/// forward and down, ending in costal cartilage; `reach[k]` (0..1) is how far forward it goes.
#[allow(clippy::too_many_arguments)]
pub fn add_ribs(
    items: &mut Vec<Item>,
    body: &Body,
    spine: &Spine,
    origins: &[f64],
    reach: &[f64],
    drop: f64,
    p: &Palette,
) {
    for (&z_origin, &t_max) in origins.iter().zip(reach) {
        for side in [-1.0f64, 1.0] {
            let n = 18;
            let mut pts = Vec::with_capacity(n + 1);
            for k in 0..=n {
                let t = t_max * k as f64 / n as f64;
                // From beside the spine (just off posterior) round the flank to the front.
                let sweep = 0.22 + t * (PI - 0.22 - 0.38);
                let theta = FRAC_PI_2 - side * sweep;
                let z = z_origin - drop * t.powf(1.4);
                let key = body.key(z);
                let (c, s) = (theta.cos(), theta.sin());
                let skin = body.radius(&key, c, s);
                // Posteriorly the ribs lie in front of the back muscles, deeper than the wall.
                let extra = 38.0 * ((theta - FRAC_PI_2).cos().max(0.0)).powi(6);
                let d = body.wall_depth(z, theta) - 2.0 + extra;
                let r = (skin - d).max(10.0);
                let pt = if k == 0 {
                    [spine.x + side * (spine.body_r[0] + 6.0), spine.y + 4.0, z_origin]
                } else {
                    [body.cx + r * c, body.cy + r * s, z]
                };
                pts.push((t, pt));
            }
            // The front fifth of a full rib is costal cartilage.
            let step = t_max / n as f64;
            let bone_pts: Vec<P3> = pts.iter().filter(|(t, _)| *t <= 0.8 + 1e-9).map(|(_, p)| *p).collect();
            let cart_pts: Vec<P3> = pts
                .iter()
                .filter(|(t, _)| *t >= 0.8 - step - 1e-9)
                .map(|(_, p)| *p)
                .collect();
            let radii = vec![4.3; bone_pts.len()];
            add_tube(items, &bone_pts, &radii, 1.3, p.bone().rim(1.2, 700.0), LabelMode::Keep);
            if t_max > 0.8 && cart_pts.len() >= 2 {
                let cr = vec![3.8; cart_pts.len()];
                add_tube(items, &cart_pts, &cr, 1.3, p.cartilage(), LabelMode::Keep);
            }
        }
    }
}

/// The scanner table under the patient: a curved composite plate (foam core, dense skins).
pub fn add_table(items: &mut Vec<Item>, body: &Body, z0: f64, z1: f64, rng: &mut Rng) {
    let key = body.key(0.5 * (z0 + z1));
    // The back rests on the table: its top cuts a few mm into the soft outline.
    let top = body.cy + key.b_post - rng.range(1.0, 4.0);
    let half = rng.range(200.0, 230.0);
    let thick = rng.range(14.0, 20.0);
    let curve = rng.range(1400.0, 2600.0);
    let plate = |inset: f64| Shape::Table {
        cx: body.cx,
        top: top + inset,
        curve,
        thick: thick - 2.0 * inset,
        half: half - inset,
        z0: z0 - 50.0,
        z1: z1 + 50.0,
    };
    items.push(Item::new(plate(0.0), Tissue::new(320.0, 10.0, 0.0), LabelMode::Clear));
    items.push(Item::new(plate(2.8), Tissue::new(-700.0, 15.0, 5.0), LabelMode::Clear));
}
