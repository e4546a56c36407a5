//! Thorax: both lungs with branching vessels and airways, heart, trachea, esophagus and spinal
//! cord, in a chest wall with ribs, sternum and scapulae.

use std::f64::consts::FRAC_PI_2;

use super::abdomen::subdivide;
use super::anatomy::{Palette, Spine, add_back_muscles, add_ribs, add_spine, add_table};
use super::render::{Body, BodyKey, Grid, Scene};
use super::shape::{Capsule, Ellipsoid, Item, LabelMode, Local, P3, Shape, Tissue, add_tube};
use crate::rng::Rng;

/// Label names, index = value.
pub const LABELS: [&str; 7] = [
    "background",
    "lung_left",
    "lung_right",
    "heart",
    "trachea",
    "esophagus",
    "spinal_cord",
];
const LUNG_L: u8 = 1;
const LUNG_R: u8 = 2;
const HEART: u8 = 3;
const TRACHEA: u8 = 4;
const ESOPHAGUS: u8 = 5;
const CORD: u8 = 6;

/// A random unit vector perpendicular to `d`.
fn perpendicular(d: P3, rng: &mut Rng) -> P3 {
    let r = [rng.range(-1.0, 1.0), rng.range(-1.0, 1.0), rng.range(-1.0, 1.0)];
    let dot = r[0] * d[0] + r[1] * d[1] + r[2] * d[2];
    let p = [r[0] - dot * d[0], r[1] - dot * d[1], r[2] - dot * d[2]];
    let n = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt().max(1e-9);
    p.map(|v| v / n)
}

fn dist2(a: P3, b: P3) -> f64 {
    (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)
}

fn unit(d: P3) -> P3 {
    let n = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt().max(1e-9);
    d.map(|v| v / n)
}

/// A branching tree of capsules from `start` along `dir`: each branch splits in two, shorter
/// and thinner (ratio ~0.8, as in vessel and airway trees), and stops where `inside` fails.
#[allow(clippy::too_many_arguments)]
fn grow_tree(
    out: &mut Vec<Capsule>,
    start: P3,
    dir: P3,
    len: f64,
    r: f64,
    generations: usize,
    inside: &dyn Fn(P3) -> bool,
    rng: &mut Rng,
) {
    let mut l = len;
    let mut end = [start[0] + l * dir[0], start[1] + l * dir[1], start[2] + l * dir[2]];
    while !inside(end) && l > len * 0.3 {
        l *= 0.6;
        end = [start[0] + l * dir[0], start[1] + l * dir[1], start[2] + l * dir[2]];
    }
    if !inside(end) {
        return;
    }
    out.push(Capsule {
        a: start,
        b: end,
        ra: r,
        rb: r * 0.9,
        zscale: 1.0,
    });
    if generations == 0 || r * 0.8 < 0.45 {
        return;
    }
    let axis = perpendicular(dir, rng);
    for sign in [-1.0, 1.0] {
        let angle = rng.range(0.3, 0.65) * sign;
        let (c, s) = (angle.cos(), angle.sin());
        let child = unit([
            dir[0] * c + axis[0] * s,
            dir[1] * c + axis[1] * s,
            dir[2] * c + axis[2] * s,
        ]);
        let shrink = rng.range(0.72, 0.86);
        grow_tree(out, end, child, len * shrink, r * shrink, generations - 1, inside, rng);
    }
}

/// Paints capsules with a tissue; walls of every capsule first, then every lumen, so that
/// joints show no wall across the lumen.
fn paint_capsules(items: &mut Vec<Item>, caps: &[Capsule], tissue: Tissue, label: LabelMode) {
    if tissue.rim > 0.0 {
        let wall = Tissue::new(tissue.rim_hu, tissue.fine, tissue.coarse);
        for c in caps {
            items.push(Item::new(Shape::Capsule(c.clone()), wall, label));
        }
        let lumen = Tissue { rim: 0.0, ..tissue };
        for c in caps {
            let shrink = tissue.rim as f64;
            let inner = Capsule {
                ra: (c.ra - shrink).max(0.3),
                rb: (c.rb - shrink).max(0.3),
                ..c.clone()
            };
            items.push(Item::new(Shape::Capsule(inner), lumen, label));
        }
    } else {
        for c in caps {
            items.push(Item::new(Shape::Capsule(c.clone()), tissue, label));
        }
    }
}

pub fn build(rng: &mut Rng, nx: usize, nz: usize) -> (Scene, Grid) {
    let pal = Palette {
        contrast: rng.uniform() < 0.6,
    };
    let s = rng.range(0.86, 1.14);
    let fat = rng.range(5.0, 12.0) + 20.0 * (s - 0.86) * rng.range(0.5, 1.5);
    let muscle = rng.range(10.0, 14.0) * s;
    let height = rng.range(240.0, 280.0);
    let (cx, cy) = (rng.range(-15.0, 15.0), rng.range(-12.0, 8.0));
    let (a, ba, bp) = (
        rng.range(150.0, 170.0) * s,
        rng.range(98.0, 114.0) * s,
        rng.range(92.0, 104.0) * s,
    );
    let key = |z: f64, fa: f64, fb: f64, m: f64| BodyKey {
        z,
        a: a * fa,
        b_ant: ba * fb,
        b_post: bp,
        fat,
        muscle: muscle * m,
    };
    let body = Body {
        cx,
        cy,
        keys: vec![
            key(-20.0, 1.0, 1.02, 1.0),
            key(0.45 * height, 1.02, 1.0, 1.1),
            key(height + 20.0, 0.94, 0.92, 1.5),
        ],
        harmonics: [
            rng.range(-0.03, 0.03),
            0.0,
            rng.range(-0.02, 0.02),
            0.0,
            rng.range(-0.02, 0.02),
            0.0,
        ],
        flat_back: rng.range(0.3, 0.6),
        skin: pal.skin(),
        fat: pal.fat(),
        muscle: pal.muscle(),
        inner: Tissue::new(-90.0, 10.0, 8.0),
    };
    let fov = (2.0 * a + 2.0 * fat + 60.0).clamp(340.0, 480.0) * rng.range(1.0, 1.08);
    let px = fov / nx as f64;
    let dz = height / nz as f64;
    let grid = Grid {
        nx,
        ny: nx,
        nz,
        px,
        dz,
        x0: -fov / 2.0 + px / 2.0,
        y0: -fov / 2.0 + px / 2.0,
        z0: dz / 2.0,
    };
    let h = height;
    let wall_front = 2.0 + fat * 1.35 + muscle * 1.2;
    let y_front = cy - ba + wall_front;
    let ys = cy + bp - (fat * 0.7 + 2.0 + 50.0 * s);
    let depth = ys - y_front;
    let ai = a - 2.0 - fat * 1.25 - muscle;
    let vb = [17.0 * s, 15.0 * s];
    let mut items = Vec::new();
    add_table(&mut items, &body, -20.0, h + 20.0, rng);

    // Lungs: fill each hemithorax back to the ribs beside the spine.
    let lung_back = ys + 38.0;
    let lung_cy = 0.5 * (y_front + lung_back);
    let lung_ry = 0.5 * (lung_back - y_front) * 1.08;
    let lungs: Vec<(f64, u8, Shape)> = [(-1.0, LUNG_R, 0.56), (1.0, LUNG_L, 0.52)]
        .iter()
        .map(|&(side, label, wf)| {
            let e = Ellipsoid::new(
                [cx + side * 0.52 * ai, lung_cy, 0.6 * h],
                [wf * ai, lung_ry, 0.66 * h],
                0.0,
                0.0,
                0.05,
                rng,
            );
            (
                side,
                label,
                Shape::Ellipsoid(e).intersect(Shape::Cavity { inset: -1.0 }),
            )
        })
        .collect();
    for (_, label, shape) in &lungs {
        items.push(Item::new(shape.clone(), pal.lung(y_front), LabelMode::Set(*label)));
    }

    // Mediastinum: narrow above, wide around the heart, and behind it along the spine.
    let upper = Ellipsoid::new(
        [cx + 3.0, 0.5 * (y_front + ys) - 8.0, 0.88 * h],
        [27.0 * s, 0.5 * depth - 4.0, 0.36 * h],
        0.0,
        0.0,
        0.06,
        rng,
    );
    let lower = Ellipsoid::new(
        [cx + 0.1 * ai, y_front + 0.45 * depth, 0.3 * h],
        [0.42 * ai, 0.5 * depth, 0.3 * h],
        0.3,
        0.0,
        0.05,
        rng,
    );
    let posterior = Ellipsoid::new(
        [cx + 6.0, ys - vb[1] - 14.0, 0.5 * h],
        [26.0 * s, 24.0, 0.75 * h],
        0.0,
        0.0,
        0.05,
        rng,
    );
    let mediastinum = Shape::Union(vec![
        Shape::Ellipsoid(upper),
        Shape::Ellipsoid(lower),
        Shape::Ellipsoid(posterior),
    ]);
    if let Shape::Union(parts) = &mediastinum {
        // Painted part by part: each keeps its own tight bounds.
        for part in parts {
            items.push(Item::new(part.clone(), Tissue::new(-85.0, 12.0, 8.0), LabelMode::Clear));
        }
    }

    // Diaphragm domes: liver on the right (higher), spleen and stomach on the left.
    let dome_r = Ellipsoid::new(
        [cx - 0.25 * ai, lung_cy, -0.12 * h],
        [0.78 * ai, lung_ry, 0.36 * h],
        0.0,
        0.0,
        0.04,
        rng,
    );
    let dome_l = Ellipsoid::new(
        [cx + 0.38 * ai, lung_cy, -0.16 * h],
        [0.6 * ai, lung_ry, 0.3 * h],
        0.0,
        0.0,
        0.04,
        rng,
    );
    let domes = Shape::Union(vec![Shape::Ellipsoid(dome_r.clone()), Shape::Ellipsoid(dome_l.clone())]);
    items.push(Item::new(
        Shape::Ellipsoid(dome_r).intersect(Shape::Cavity { inset: 0.0 }),
        pal.liver(),
        LabelMode::Clear,
    ));
    items.push(Item::new(
        Shape::Ellipsoid(dome_l).intersect(Shape::Cavity { inset: 0.0 }),
        pal.spleen(),
        LabelMode::Clear,
    ));
    let bubble = Ellipsoid::new(
        [cx + 0.32 * ai, y_front + 0.35 * depth, 0.0],
        [32.0, 24.0, 0.07 * h],
        0.4,
        0.0,
        0.1,
        rng,
    );
    items.push(Item::new(
        Shape::Ellipsoid(bubble).intersect(Shape::Cavity { inset: 6.0 }),
        pal.air().rim(3.5, 45.0),
        LabelMode::Clear,
    ));

    // Heart in its pericardial fat; the myocardium is the rim, the chambers the core.
    let heart_c = [cx + 0.18 * ai, y_front + 0.4 * depth, 0.27 * h];
    let heart_r = [0.4 * ai, 0.36 * depth, 0.2 * h];
    let (yaw, pitch) = (rng.range(0.4, 0.7), rng.range(0.15, 0.4));
    let heart = Ellipsoid::new(heart_c, heart_r, yaw, pitch, 0.08, rng);
    let pericardium = Ellipsoid::from_parts(heart.center, heart.rot, heart.radii.map(|r| r + 6.0), heart.bumps);
    items.push(Item::new(Shape::Ellipsoid(pericardium), pal.fat(), LabelMode::Clear));
    let heart_tissue = if pal.contrast {
        Tissue::new(240.0, 6.0, 4.0).rim(9.0, 105.0)
    } else {
        Tissue::new(44.0, 4.0, 3.0).rim(9.0, 50.0)
    };
    let heart_shape = Shape::Ellipsoid(heart.clone());
    items.push(Item::new(heart_shape.clone(), heart_tissue, LabelMode::Set(HEART)));

    // Great vessels.
    let ao_r = 14.0 * s;
    let aorta = [
        [heart_c[0] - 12.0, heart_c[1] + 5.0, 0.38 * h],
        [cx - 0.08 * ai, y_front + 0.36 * depth, 0.55 * h],
        [cx - 0.06 * ai, y_front + 0.32 * depth, 0.72 * h],
        [cx + 0.02 * ai, y_front + 0.5 * depth, 0.82 * h],
        [cx + 0.14 * ai, ys - vb[1] - 20.0, 0.77 * h],
        [cx + 0.17 * ai, ys - vb[1] - 10.0, 0.6 * h],
        [cx + 0.14 * ai, ys - vb[1] - 12.0, 0.1 * h],
        [cx + 0.1 * ai, ys - vb[1] - 18.0, -20.0],
    ];
    let aorta = subdivide(&aorta, 15.0);
    let ao_radii: Vec<f64> = aorta
        .iter()
        .map(|p| {
            if p[1] < y_front + 0.45 * depth {
                ao_r
            } else {
                ao_r * 0.85
            }
        })
        .collect();
    add_tube(&mut items, &aorta, &ao_radii, 1.0, pal.blood(), LabelMode::Clear);
    let pa = [
        [heart_c[0] + 5.0, y_front + 0.28 * depth, 0.4 * h],
        [cx + 0.12 * ai, y_front + 0.42 * depth, 0.6 * h],
    ];
    add_tube(
        &mut items,
        &pa,
        &[13.0 * s, 13.0 * s],
        1.0,
        pal.blood(),
        LabelMode::Clear,
    );
    let hilum_r = [cx - 0.3 * ai, y_front + 0.56 * depth, 0.58 * h];
    let hilum_l = [cx + 0.32 * ai, y_front + 0.6 * depth, 0.61 * h];
    add_tube(
        &mut items,
        &[pa[1], hilum_r],
        &[10.0 * s, 8.0 * s],
        1.0,
        pal.blood(),
        LabelMode::Clear,
    );
    add_tube(
        &mut items,
        &[pa[1], hilum_l],
        &[10.0 * s, 8.0 * s],
        1.0,
        pal.blood(),
        LabelMode::Clear,
    );
    let svc = [
        [cx - 0.22 * ai, y_front + 0.4 * depth, 0.45 * h],
        [cx - 0.2 * ai, y_front + 0.38 * depth, h + 20.0],
    ];
    add_tube(
        &mut items,
        &svc,
        &[10.0 * s, 10.0 * s],
        1.0,
        pal.vein(),
        LabelMode::Clear,
    );
    for (dx, r) in [(-0.1, 7.0), (0.03, 5.0), (0.12, 6.0)] {
        let v = [
            [cx + dx * ai, y_front + 0.45 * depth, 0.8 * h],
            [cx + 1.8 * dx * ai, y_front + 0.45 * depth, h + 20.0],
        ];
        add_tube(&mut items, &v, &[r * s, r * s], 1.0, pal.blood(), LabelMode::Clear);
    }

    // Trachea to the carina, main bronchi to the hila, then the airway trees.
    let tr_y = ys - vb[1] - 24.0;
    let carina = [cx + 2.0, tr_y + 4.0, 0.63 * h];
    let trachea = [[cx, tr_y - 6.0, h + 20.0], [cx + 1.0, tr_y, 0.8 * h], carina];
    let airway = pal.air().rim(2.0, 40.0);
    add_tube(
        &mut items,
        &trachea,
        &[9.5 * s; 3],
        1.0,
        airway,
        LabelMode::Set(TRACHEA),
    );
    let mut airways = Vec::new();
    let mut vessels = Vec::new();
    let lung_local = |p: P3| body.local(p);
    for (side, hilum) in [(-1.0, hilum_r), (1.0, hilum_l)] {
        let shape = &lungs
            .iter()
            .find(|l| l.0 == side)
            .map(|l| l.2.clone())
            .unwrap_or(Shape::Union(vec![]));
        let inside = |p: P3| {
            let at: Local = lung_local(p);
            shape.dist(p, at, f64::INFINITY) < -3.0
                && mediastinum.dist(p, at, f64::INFINITY) > 2.0
                && domes.dist(p, at, f64::INFINITY) > 2.0
                && heart_shape.dist(p, at, f64::INFINITY) > 8.0
        };
        let bronchus_end = [hilum[0] + side * 8.0, hilum[1] + 6.0, hilum[2] - 4.0];
        airways.push(Capsule {
            a: carina,
            b: bronchus_end,
            ra: 7.0 * s,
            rb: 6.0 * s,
            zscale: 1.0,
        });
        let lobes = [
            [side * 0.3, 0.2, 1.0],
            [side * 0.6, -0.3, 0.8],
            [side * 0.5, 0.6, -0.8],
            [side * 0.3, 0.9, -0.3],
            [side * 1.0, 0.1, -0.3],
            [side * 0.5, -1.0, -0.3],
            [side * 0.6, 0.3, -1.0],
        ];
        let first_vessel = vessels.len();
        for (k, d) in lobes.iter().enumerate() {
            let d = unit(*d);
            if k % 2 == 0 {
                grow_tree(&mut airways, bronchus_end, d, 22.0 * s, 4.2 * s, 3, &inside, rng);
            }
            let start = [hilum[0] + side * 4.0, hilum[1] - 4.0, hilum[2]];
            for _ in 0..2 {
                let dv = unit([
                    d[0] + rng.range(-0.3, 0.3),
                    d[1] + rng.range(-0.3, 0.3),
                    d[2] + rng.range(-0.3, 0.3),
                ]);
                grow_tree(&mut vessels, start, dv, 24.0 * s, 5.0 * s, 8, &inside, rng);
            }
        }
        // Fill the periphery: vessels from the larger branches to random points of the lung,
        // tapering as they go, so that every part of the lung shows dots and streaks.
        let trunks: Vec<(P3, f64)> = vessels[first_vessel..]
            .iter()
            .filter(|c| c.rb > 1.6 * s)
            .map(|c| (c.b, c.rb))
            .collect();
        let (lo, hi) = shape.bounds();
        let mut placed = 0;
        for _ in 0..700 {
            if placed == 80 || trunks.is_empty() {
                break;
            }
            let target = [
                rng.range(lo[0], hi[0]),
                rng.range(lo[1], hi[1]),
                rng.range(lo[2], hi[2]),
            ];
            if !inside(target) {
                continue;
            }
            let nearest = trunks
                .iter()
                .min_by(|a, b| dist2(a.0, target).total_cmp(&dist2(b.0, target)))
                .copied()
                .unwrap_or((hilum, 3.0));
            let mid = [0, 1, 2].map(|a| 0.5 * (nearest.0[a] + target[a]) + rng.range(-6.0, 6.0));
            if !inside(mid) {
                continue;
            }
            let r0 = nearest.1.min(2.2);
            vessels.push(Capsule {
                a: nearest.0,
                b: mid,
                ra: r0,
                rb: 0.7 * r0,
                zscale: 1.0,
            });
            vessels.push(Capsule {
                a: mid,
                b: target,
                ra: 0.7 * r0,
                rb: 0.55,
                zscale: 1.0,
            });
            placed += 1;
        }
    }
    let vessel_tissue = Tissue::new(if pal.contrast { 150.0 } else { 40.0 }, 4.0, 2.0);
    paint_capsules(&mut items, &vessels, vessel_tissue, LabelMode::Keep);
    paint_capsules(&mut items, &airways, pal.air().rim(1.3, 20.0), LabelMode::Keep);

    // Esophagus behind the trachea, swinging left toward the stomach.
    let eso = [
        [cx + 4.0, ys - vb[1] - 4.0, h + 20.0],
        [cx + 8.0, ys - vb[1] - 4.0, 0.45 * h],
        [cx + 0.16 * ai, ys - vb[1] - 12.0, 0.08 * h],
        [cx + 0.26 * ai, y_front + 0.5 * depth, -20.0],
    ];
    let eso = subdivide(&eso, 20.0);
    let er = vec![7.5 * s; eso.len()];
    add_tube(&mut items, &eso, &er, 1.0, pal.muscle(), LabelMode::Set(ESOPHAGUS));
    if rng.uniform() < 0.3 {
        add_tube(&mut items, &eso, &vec![1.8; eso.len()], 1.0, pal.air(), LabelMode::Keep);
    }

    // Spine, back muscles, ribs, sternum, scapulae.
    let spine = Spine {
        x: cx,
        y: ys,
        z0: -20.0,
        z1: h + 20.0,
        period: 25.0 * s,
        phase: rng.range(0.0, 25.0),
        body_r: vb,
        canal_r: 8.0 * s,
        cord_bottom: -100.0,
        cord_label: CORD,
        spinous: 34.0 * s,
        transverse: 26.0 * s,
    };
    add_back_muscles(&mut items, &body, &spine, -20.0, h + 20.0, &pal);
    add_spine(&mut items, &spine, &pal, rng);
    let pitch = 24.0 * s;
    let origins: Vec<f64> = (0..13)
        .map(|k| h + 45.0 - k as f64 * pitch)
        .filter(|&z| z > -70.0)
        .collect();
    let reach: Vec<f64> = (0..origins.len())
        .map(|k| if k + 3 < origins.len() { 1.0 } else { 0.75 })
        .collect();
    add_ribs(&mut items, &body, &spine, &origins, &reach, 95.0 * s, &pal);
    let st_y = cy - ba + 2.0 + fat * 1.35 + 7.0;
    for dx in [-5.0, 5.0] {
        let sternum = [[cx + dx, st_y, 0.22 * h], [cx + dx * 1.4, st_y - 2.0, 0.95 * h]];
        add_tube(&mut items, &sternum, &[6.0, 7.0], 1.0, pal.bone(), LabelMode::Clear);
    }
    for side in [-1.0, 1.0] {
        let theta = FRAC_PI_2 - side * 0.75;
        let zc = 0.82 * h;
        let (sx, sy) = body.skin_point(zc, theta);
        let inward = 2.0 + fat + 10.0;
        let (c, sn) = (theta.cos(), theta.sin());
        let center = [sx - inward * c, sy - inward * sn, zc];
        // Tangent to the skin there (the back is flatter than a circle).
        let (ax, ay) = body.skin_point(zc, theta - 0.05);
        let (bx, by) = body.skin_point(zc, theta + 0.05);
        let yaw = (by - ay).atan2(bx - ax);
        let muscle_e = Ellipsoid::new(center, [50.0 * s, 13.0, 62.0], yaw, 0.0, 0.05, rng);
        items.push(Item::new(Shape::Ellipsoid(muscle_e), pal.muscle(), LabelMode::Clear));
        let blade = Ellipsoid::new(center, [42.0 * s, 3.0, 58.0], yaw, 0.0, 0.03, rng);
        items.push(Item::new(
            Shape::Ellipsoid(blade),
            pal.bone().rim(1.2, 650.0),
            LabelMode::Clear,
        ));
    }
    let scene = Scene {
        body,
        items,
        noise_sigma: rng.range(10.0, 16.0) as f32 * s as f32,
        warp_mm: rng.range(3.0, 6.0),
    };
    (scene, grid)
}
