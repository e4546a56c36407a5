//! Abdomen: liver, spleen, kidneys, stomach with gas, pancreas, gallbladder, aorta, bowel and
//! spinal cord, among the unlabelled anatomy that makes a slice look like CT.

use std::f64::consts::PI;

use super::anatomy::{Palette, Spine, add_back_muscles, add_ribs, add_spine, add_table};
use super::render::{Body, BodyKey, Grid, Scene};
use super::shape::{Ellipsoid, Item, LabelMode, P3, Shape, Tissue, add_tube};
use crate::rng::Rng;

/// Label names, index = value.
pub const LABELS: [&str; 11] = [
    "background",
    "liver",
    "spleen",
    "kidney_left",
    "kidney_right",
    "stomach",
    "pancreas",
    "gallbladder",
    "aorta",
    "bowel",
    "spinal_cord",
];
const LIVER: u8 = 1;
const SPLEEN: u8 = 2;
const KIDNEY_L: u8 = 3;
const KIDNEY_R: u8 = 4;
const STOMACH: u8 = 5;
const PANCREAS: u8 = 6;
const GALLBLADDER: u8 = 7;
const AORTA: u8 = 8;
const BOWEL: u8 = 9;
const CORD: u8 = 10;

/// A smoothly wandering tube: `n` steps of `step` mm from `start`, heading `dir` and turning
/// by up to `turn` radians per step, kept inside the box (lo, hi).
#[allow(clippy::too_many_arguments)]
pub fn random_walk(start: P3, dir: P3, n: usize, step: f64, turn: f64, lo: P3, hi: P3, rng: &mut Rng) -> Vec<P3> {
    let mut pts = vec![start];
    let mut d = dir;
    let mut p = start;
    for _ in 0..n {
        for v in d.iter_mut() {
            *v += rng.range(-turn, turn);
        }
        let norm = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt().max(1e-9);
        d = d.map(|v| v / norm);
        let mut q = [p[0] + step * d[0], p[1] + step * d[1], p[2] + step * d[2]];
        for a in 0..3 {
            if q[a] < lo[a] || q[a] > hi[a] {
                d[a] = -d[a];
                q[a] = q[a].clamp(lo[a], hi[a]);
            }
        }
        pts.push(q);
        p = q;
    }
    pts
}

pub fn build(rng: &mut Rng, nx: usize, nz: usize) -> (Scene, Grid) {
    let pal = Palette {
        contrast: rng.uniform() < 0.6,
    };
    let s = rng.range(0.86, 1.14); // patient size
    let fat = rng.range(6.0, 16.0) + 30.0 * (s - 0.86) * rng.range(0.6, 1.4);
    let muscle = rng.range(8.0, 13.0) * s;
    let height = rng.range(210.0, 260.0);
    let (cx, cy) = (rng.range(-15.0, 15.0), rng.range(-12.0, 12.0));
    let (a, ba, bp) = (
        rng.range(140.0, 160.0) * s,
        rng.range(100.0, 118.0) * s,
        rng.range(92.0, 106.0) * s,
    );
    let key = |z: f64, f: f64| BodyKey {
        z,
        a: a * f,
        b_ant: ba * f,
        b_post: bp,
        fat,
        muscle,
    };
    let body = Body {
        cx,
        cy,
        keys: vec![key(-20.0, 1.04), key(0.5 * height, 1.0), key(height + 20.0, 0.97)],
        harmonics: [
            rng.range(-0.04, 0.04),
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
        inner: pal.visceral_fat(),
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

    // Anatomical frame.
    let wall_front = 2.0 + fat * 1.35 + muscle * 1.2;
    let y_front = cy - ba + wall_front;
    let ys = cy + bp - (fat * 0.7 + 2.0 + 62.0 * s); // vertebral body centre
    let depth = ys - y_front;
    let ai = a - 2.0 - fat * 1.25 - muscle;
    let z_top = height - rng.range(0.0, 18.0); // liver dome
    let zp = z_top - rng.range(98.0, 112.0); // pancreas
    let mut items = Vec::new();
    let j = |rng: &mut Rng, v: f64| v * rng.range(0.9, 1.1);

    add_table(&mut items, &body, -20.0, height + 20.0, rng);

    // Bowel: colon frame, small bowel loops, duodenum.
    let wall = if pal.contrast { 85.0 } else { 42.0 };
    let colon = pal.stool().rim(2.5, wall);
    let haustra = |n: usize, r: f64, rng: &mut Rng| -> Vec<f64> {
        (0..n)
            .map(|k| r * if k % 2 == 0 { 1.0 } else { rng.range(0.72, 0.88) })
            .collect()
    };
    let asc = [
        [cx - 0.78 * ai, y_front + 0.62 * depth, -15.0],
        [cx - 0.8 * ai, y_front + 0.58 * depth, z_top - 170.0],
        [cx - 0.72 * ai, y_front + 0.5 * depth, z_top - 122.0],
    ];
    let trans = [
        asc[2],
        [cx - 0.4 * ai, y_front + 0.2 * depth, z_top - 122.0],
        [cx, y_front + 0.12 * depth, z_top - rng.range(130.0, 160.0)],
        [cx + 0.4 * ai, y_front + 0.2 * depth, z_top - 110.0],
        [cx + 0.72 * ai, y_front + 0.45 * depth, z_top - 88.0],
    ];
    let desc = [
        trans[4],
        [cx + 0.82 * ai, y_front + 0.7 * depth, z_top - 130.0],
        [cx + 0.8 * ai, y_front + 0.72 * depth, -15.0],
    ];
    for path in [&asc[..], &trans[..], &desc[..]] {
        let pts = subdivide(path, 14.0);
        let r = haustra(pts.len(), j(rng, 22.0 * s), rng);
        add_tube(&mut items, &pts, &r, 1.0, colon, LabelMode::Set(BOWEL));
    }
    let oral_contrast = rng.uniform() < 0.3;
    let loops = 12 + rng.below(9) as usize;
    let lo = [cx - 0.6 * ai, y_front + 8.0, -10.0];
    let hi = [cx + 0.6 * ai, ys - 28.0, zp - 25.0];
    for _ in 0..loops {
        let start = [
            rng.range(lo[0], hi[0]),
            rng.range(lo[1], hi[1]),
            rng.range(lo[2], hi[2]),
        ];
        let dir = [rng.range(-1.0, 1.0), rng.range(-1.0, 1.0), rng.range(-1.0, 1.0)];
        let pts = random_walk(start, dir, 7 + rng.below(6) as usize, 16.0, 0.7, lo, hi, rng);
        let r = vec![rng.range(9.0, 13.0) * s; pts.len()];
        let content = match rng.below(10) {
            0..=1 => pal.stool(),
            _ if oral_contrast => Tissue::new(rng.range(180.0, 320.0) as f32, 25.0, 10.0),
            _ => Tissue::new(rng.range(5.0, 25.0) as f32, 10.0, 5.0),
        };
        add_tube(&mut items, &pts, &r, 1.0, content.rim(2.0, wall), LabelMode::Set(BOWEL));
    }
    let duodenum = [
        [cx - 0.02 * ai, y_front + 0.3 * depth, zp + 5.0],
        [cx - 0.32 * ai, ys - 48.0, zp],
        [cx - 0.34 * ai, ys - 40.0, zp - 28.0],
        [cx - 0.05 * ai, ys - 36.0, zp - 42.0],
        [cx + 0.15 * ai, ys - 40.0, zp - 38.0],
    ];
    add_tube(
        &mut items,
        &subdivide(&duodenum, 12.0),
        &vec![j(rng, 10.0 * s); subdivide(&duodenum, 12.0).len()],
        1.0,
        pal.fluid().rim(2.0, wall),
        LabelMode::Set(BOWEL),
    );

    // Liver: right lobe hugging the wall, left lobe across the midline.
    let right_lobe = Ellipsoid::new(
        [cx - 0.52 * ai, y_front + 0.5 * depth, z_top - 70.0],
        [j(rng, 0.5 * ai), j(rng, 0.58 * depth + 8.0), j(rng, 70.0 * s)],
        rng.range(-0.2, 0.2),
        rng.range(-0.15, 0.15),
        0.1,
        rng,
    );
    let left_lobe = Ellipsoid::new(
        [cx + 0.0 * ai, y_front + 0.2 * depth, z_top - 35.0],
        [j(rng, 0.4 * ai), j(rng, 0.24 * depth), j(rng, 38.0 * s)],
        rng.range(-0.3, 0.1),
        0.0,
        0.12,
        rng,
    );
    let liver = Shape::Union(vec![Shape::Ellipsoid(right_lobe), Shape::Ellipsoid(left_lobe)])
        .intersect(Shape::Cavity { inset: 0.0 })
        .intersect(Shape::HalfSpace {
            n: [0.0, 1.0, 0.0],
            offset: ys + 30.0,
        });
    items.push(Item::new(liver, pal.liver(), LabelMode::Set(LIVER)));
    // Portal and hepatic veins inside the liver (part of the organ's label).
    let hilum = [cx - 0.28 * ai, y_front + 0.55 * depth, z_top - 80.0];
    let liver_vessel = Tissue::new(if pal.contrast { 150.0 } else { 45.0 }, 3.0, 2.0);
    for k in 0..5 {
        let ang = -0.9 * PI + k as f64 * 0.35 * PI + rng.range(-0.15, 0.15);
        let end = [
            hilum[0] + 60.0 * s * ang.cos(),
            hilum[1] + 45.0 * s * ang.sin(),
            hilum[2] + rng.range(-25.0, 35.0),
        ];
        let mid = [
            (hilum[0] + end[0]) / 2.0,
            (hilum[1] + end[1]) / 2.0 + rng.range(-8.0, 8.0),
            (hilum[2] + end[2]) / 2.0,
        ];
        add_tube(
            &mut items,
            &[hilum, mid, end],
            &[5.5, 3.5, 1.5],
            1.0,
            liver_vessel,
            LabelMode::Keep,
        );
    }
    let ivc_top = [cx - 22.0, ys - 24.0, z_top - 12.0];
    for k in 0..3 {
        let end = [
            cx - 0.2 * ai - k as f64 * 0.3 * ai,
            y_front + 0.2 * depth + k as f64 * 10.0,
            z_top - 50.0 - rng.range(0.0, 20.0),
        ];
        add_tube(
            &mut items,
            &[ivc_top, end],
            &[5.0, 2.0],
            1.0,
            liver_vessel,
            LabelMode::Keep,
        );
    }

    // Gallbladder under the liver.
    let gb = Ellipsoid::new(
        [cx - 0.3 * ai, y_front + 0.24 * depth, z_top - rng.range(100.0, 120.0)],
        [j(rng, 15.0), j(rng, 17.0), j(rng, 32.0)],
        rng.range(-0.5, 0.5),
        rng.range(0.3, 0.7),
        0.08,
        rng,
    );
    items.push(Item::new(Shape::Ellipsoid(gb), pal.bile(), LabelMode::Set(GALLBLADDER)));

    // Spleen: a crescent along the left posterolateral wall.
    let spleen_c = [cx + 0.7 * ai, ys + 8.0, z_top - rng.range(50.0, 65.0)];
    let spleen = Ellipsoid::new(
        spleen_c,
        [j(rng, 22.0 * s), j(rng, 55.0 * s), j(rng, 50.0 * s)],
        -0.9 + rng.range(-0.2, 0.2),
        0.0,
        0.08,
        rng,
    );
    let hilum_cut = Ellipsoid::new(
        [spleen_c[0] - 32.0 * s, spleen_c[1] - 18.0, spleen_c[2]],
        [22.0 * s, 30.0 * s, 40.0 * s],
        -0.9,
        0.0,
        0.0,
        rng,
    );
    let spleen = Shape::Ellipsoid(spleen)
        .subtract(Shape::Ellipsoid(hilum_cut))
        .intersect(Shape::Cavity { inset: 0.0 });
    items.push(Item::new(spleen, pal.spleen(), LabelMode::Set(SPLEEN)));

    // Stomach: wall, contents, and gas floating anteriorly above an air-fluid level.
    let st_c = [cx + 0.32 * ai, y_front + 0.32 * depth, z_top - rng.range(40.0, 55.0)];
    let st_r = [j(rng, 50.0 * s), j(rng, 36.0 * s), j(rng, 55.0 * s)];
    let yaw = rng.range(0.4, 0.8);
    let stomach = Ellipsoid::new(st_c, st_r, yaw, 0.2, 0.1, rng);
    let food = Tissue::new(rng.range(10.0, 35.0) as f32, 30.0, 12.0);
    let st_wall = if pal.contrast { 75.0 } else { 42.0 };
    items.push(Item::new(
        Shape::Ellipsoid(stomach.clone()).intersect(Shape::Cavity { inset: 0.0 }),
        food.rim(4.0, st_wall),
        LabelMode::Set(STOMACH),
    ));
    let lumen = stomach.shrunk(4.5);
    let level = st_c[1] + rng.range(-0.7, 0.1) * st_r[1];
    items.push(Item::new(
        Shape::Ellipsoid(lumen)
            .intersect(Shape::HalfSpace {
                n: [0.0, 1.0, 0.0],
                offset: level,
            })
            .intersect(Shape::Cavity { inset: 4.0 }),
        pal.air(),
        LabelMode::Keep,
    ));

    // Pancreas from head to tail, with the splenic vein along its back.
    let pan = [
        [cx - 0.2 * ai, ys - 44.0, zp - 12.0],
        [cx - 0.03 * ai, ys - 56.0, zp - 4.0],
        [cx + 0.22 * ai, ys - 50.0, zp + 4.0],
        [cx + 0.48 * ai, ys - 26.0, zp + 12.0],
    ];
    let pan: Vec<P3> = pan
        .iter()
        .map(|p| [p[0] + rng.range(-5.0, 5.0), p[1] + rng.range(-4.0, 4.0), p[2]])
        .collect();
    add_tube(
        &mut items,
        &pan,
        &[j(rng, 16.0 * s), j(rng, 11.0 * s), j(rng, 11.0 * s), j(rng, 9.0 * s)],
        1.4,
        pal.pancreas(),
        LabelMode::Set(PANCREAS),
    );
    let splenic_vein: Vec<P3> = pan[1..].iter().map(|p| [p[0], p[1] + 10.0, p[2] + 2.0]).collect();
    add_tube(
        &mut items,
        &splenic_vein,
        &[4.5, 4.0, 3.5],
        1.0,
        pal.vein(),
        LabelMode::Clear,
    );
    let portal = [[cx - 0.03 * ai, ys - 50.0, zp - 2.0], hilum];
    add_tube(&mut items, &portal, &[7.0, 6.0], 1.0, liver_vessel, LabelMode::Keep);

    // Kidneys: cortex brighter than medulla, sinus fat at the hilum; the right one lower.
    for (side, label, dzk) in [(1.0, KIDNEY_L, 0.0), (-1.0, KIDNEY_R, -rng.range(10.0, 22.0))] {
        let c = [
            cx + side * j(rng, 68.0 * s),
            ys + rng.range(0.0, 10.0),
            z_top - 118.0 + dzk,
        ];
        // Perirenal fat first: the kidney sits in its own fat capsule.
        let capsule = Ellipsoid::new(c, [36.0 * s, 40.0 * s, 62.0 * s], side * 0.5, 0.2, 0.05, rng);
        items.push(Item::new(
            Shape::Ellipsoid(capsule),
            pal.visceral_fat(),
            LabelMode::Clear,
        ));
        let k = Ellipsoid::new(
            c,
            [j(rng, 22.0 * s), j(rng, 28.0 * s), j(rng, 52.0 * s)],
            side * rng.range(0.4, 0.7),
            rng.range(0.05, 0.2),
            0.06,
            rng,
        );
        let yaw = side * 0.55;
        items.push(Item::new(Shape::Ellipsoid(k), pal.kidney(), LabelMode::Set(label)));
        let sinus_c = [c[0] - side * 9.0 * yaw.cos(), c[1] - 7.0, c[2]];
        let sinus = Ellipsoid::new(sinus_c, [8.0 * s, 11.0 * s, 28.0 * s], yaw, 0.2, 0.1, rng);
        items.push(Item::new(
            Shape::Ellipsoid(sinus),
            Tissue::new(-45.0, 30.0, 10.0),
            LabelMode::Clear,
        ));
        // Renal vein to the IVC / across the aorta.
        let ivc_x = cx - 22.0;
        let rv = [
            [sinus_c[0], sinus_c[1] - 4.0, c[2] + 5.0],
            [ivc_x, ys - 26.0, c[2] + 8.0],
        ];
        add_tube(&mut items, &rv, &[4.5, 5.0], 1.0, pal.vein(), LabelMode::Clear);
    }

    // Great vessels: aorta (labelled) left of midline, IVC to the right, SMA and SMV.
    let ao_y = ys - 0.85 * 18.0 * s - rng.range(12.0, 18.0);
    let bif = z_top - rng.range(205.0, 225.0);
    let ao_r = j(rng, 11.0 * s);
    let aorta = [
        [cx + 12.0, ao_y, height + 20.0],
        [cx + 13.0, ao_y - 2.0, 0.5 * height],
        [cx + 10.0, ao_y - 4.0, bif],
    ];
    add_tube(
        &mut items,
        &aorta,
        &[ao_r, ao_r * 0.95, ao_r * 0.85],
        1.0,
        pal.blood(),
        LabelMode::Set(AORTA),
    );
    for side in [-1.0, 1.0] {
        let iliac = [
            [cx + 10.0, ao_y - 4.0, bif + 4.0],
            [cx + side * 40.0 * s, ao_y + 8.0, bif - 60.0],
        ];
        add_tube(
            &mut items,
            &iliac,
            &[ao_r * 0.6, ao_r * 0.55],
            1.0,
            pal.blood(),
            LabelMode::Clear,
        );
    }
    let ivc = [
        [cx - 22.0, ys - 26.0, -20.0],
        [cx - 23.0, ys - 28.0, 0.6 * height],
        ivc_top,
        [cx - 20.0, ys - 26.0, height + 20.0],
    ];
    let ivc_r = j(rng, 11.0 * s);
    add_tube(
        &mut items,
        &ivc,
        &[ivc_r, ivc_r, ivc_r, ivc_r],
        1.0,
        pal.vein(),
        LabelMode::Clear,
    );
    let sma = [
        [cx + 12.0, ao_y - ao_r, zp + 8.0],
        [cx + 8.0, ao_y - 32.0, zp - 15.0],
        [cx + 12.0, y_front + 40.0, -10.0],
    ];
    add_tube(&mut items, &sma, &[3.5, 3.2, 2.5], 1.0, pal.blood(), LabelMode::Clear);
    let smv: Vec<P3> = sma.iter().map(|p| [p[0] - 14.0, p[1] - 2.0, p[2]]).collect();
    add_tube(&mut items, &smv, &[5.0, 4.5, 3.5], 1.0, pal.vein(), LabelMode::Clear);

    // Mesenteric vessels: small bright dots and streaks in the fat between the loops.
    for _ in 0..18 {
        let a = [
            cx + rng.range(-0.4, 0.4) * ai,
            rng.range(y_front + 15.0, ys - 35.0),
            rng.range(0.0, zp - 10.0),
        ];
        let b = [
            a[0] + rng.range(-25.0, 25.0),
            a[1] + rng.range(-20.0, 20.0),
            a[2] + rng.range(-40.0, 10.0),
        ];
        let r = rng.range(1.2, 2.6);
        add_tube(&mut items, &[a, b], &[r, r * 0.7], 1.0, pal.blood(), LabelMode::Keep);
    }

    // Retroperitoneal muscles and the back.
    let spine = Spine {
        x: cx,
        y: ys,
        z0: -20.0,
        z1: height + 20.0,
        period: 34.0 * s,
        phase: rng.range(0.0, 34.0),
        body_r: [22.0 * s, 17.0 * s],
        canal_r: 9.0 * s,
        cord_bottom: z_top - rng.range(140.0, 165.0),
        cord_label: CORD,
        spinous: 30.0 * s,
        transverse: 36.0 * s,
    };
    for side in [-1.0, 1.0] {
        let psoas = [
            [cx + side * 30.0 * s, ys - 4.0, z_top - 140.0],
            [cx + side * 38.0 * s, ys - 8.0, z_top - 190.0],
            [cx + side * 48.0 * s, ys - 12.0, -20.0],
        ];
        add_tube(
            &mut items,
            &psoas,
            &[5.0, 14.0 * s, 22.0 * s],
            1.0,
            pal.muscle(),
            LabelMode::Clear,
        );
        let ql = [
            [cx + side * 62.0 * s, ys + 18.0, z_top - 120.0],
            [cx + side * 66.0 * s, ys + 20.0, -20.0],
        ];
        add_tube(
            &mut items,
            &ql,
            &[8.0 * s, 13.0 * s],
            1.0,
            pal.muscle(),
            LabelMode::Clear,
        );
    }
    add_back_muscles(&mut items, &body, &spine, -20.0, height + 20.0, &pal);

    // Lung bases in the posterior recesses at the top.
    for side in [-1.0, 1.0] {
        let base = Ellipsoid::new(
            [cx + side * 0.55 * ai, ys - 5.0, z_top + 55.0],
            [0.42 * ai, 0.45 * depth + 25.0, 80.0],
            0.0,
            -0.35,
            0.05,
            rng,
        );
        let lung = Shape::Ellipsoid(base).intersect(Shape::Cavity { inset: 2.0 });
        items.push(Item::new(lung, pal.lung(y_front), LabelMode::Clear));
    }
    add_spine(&mut items, &spine, &pal, rng);
    // Lower ribs (the 9th to 12th) around the upper abdomen.
    let pitch = 26.0 * s;
    let origins: Vec<f64> = (0..4).map(|k| z_top + 40.0 - k as f64 * pitch).collect();
    add_ribs(
        &mut items,
        &body,
        &spine,
        &origins,
        &[0.95, 0.85, 0.6, 0.45],
        70.0 * s,
        &pal,
    );
    // Iliac wings at the bottom when the scan reaches them.
    let crest = z_top - rng.range(210.0, 230.0);
    for side in [-1.0, 1.0] {
        let wing = Ellipsoid::new(
            [cx + side * 0.72 * ai, ys + 12.0, crest - 40.0],
            [8.0, 45.0 * s, 45.0],
            side * 0.5,
            0.0,
            0.05,
            rng,
        );
        items.push(Item::new(Shape::Ellipsoid(wing), pal.bone(), LabelMode::Clear));
    }
    let scene = Scene {
        body,
        items,
        noise_sigma: rng.range(11.0, 18.0) as f32 * s as f32,
        warp_mm: rng.range(3.0, 6.0),
    };
    (scene, grid)
}

/// Inserts points so that no segment is longer than `max_len` mm.
pub fn subdivide(path: &[P3], max_len: f64) -> Vec<P3> {
    let mut out = vec![path[0]];
    for w in path.windows(2) {
        let d = ((w[1][0] - w[0][0]).powi(2) + (w[1][1] - w[0][1]).powi(2) + (w[1][2] - w[0][2]).powi(2)).sqrt();
        let n = (d / max_len).ceil().max(1.0) as usize;
        for k in 1..=n {
            let t = k as f64 / n as f64;
            out.push([0, 1, 2].map(|a| w[0][a] + t * (w[1][a] - w[0][a])));
        }
    }
    out
}
