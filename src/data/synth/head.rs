//! Head and neck, from the lower neck to above the orbits: brainstem, mandible, parotid and
//! submandibular glands, optic nerves and chiasm (small on purpose), spinal cord; with skull,
//! brain, orbits, sinuses, airway, teeth, muscles and vessels around them.

use std::f64::consts::PI;

use super::anatomy::{Palette, Spine, add_back_muscles, add_spine, add_table};
use super::render::{Body, BodyKey, Grid, Scene};
use super::shape::{Capsule, Ellipsoid, Item, LabelMode, P3, Shape, Tissue, add_tube};
use crate::rng::Rng;

/// Label names, index = value.
pub const LABELS: [&str; 11] = [
    "background",
    "brainstem",
    "mandible",
    "parotid_left",
    "parotid_right",
    "submandibular_left",
    "submandibular_right",
    "optic_nerve_left",
    "optic_nerve_right",
    "optic_chiasm",
    "spinal_cord",
];
const BRAINSTEM: u8 = 1;
const MANDIBLE: u8 = 2;
const PAROTID_L: u8 = 3;
const PAROTID_R: u8 = 4;
const SUBMAND_L: u8 = 5;
const SUBMAND_R: u8 = 6;
const OPTIC_L: u8 = 7;
const OPTIC_R: u8 = 8;
const CHIASM: u8 = 9;
const CORD: u8 = 10;

pub fn build(rng: &mut Rng, nx: usize, nz: usize) -> (Scene, Grid) {
    let pal = Palette {
        contrast: rng.uniform() < 0.5,
    };
    let s = rng.range(0.9, 1.1);
    let height = rng.range(125.0, 150.0);
    let h = height;
    let (cx, cy) = (rng.range(-8.0, 8.0), rng.range(-10.0, 10.0));
    let fat = rng.range(3.0, 8.0);
    let key = |zf: f64, a: f64, ba: f64, bp: f64, f: f64, m: f64| BodyKey {
        z: zf * h,
        a: a * s,
        b_ant: ba * s,
        b_post: bp * s,
        fat: f,
        muscle: m,
    };
    // Neck, lower face, face and skull: the outline grows and lengthens forward upward.
    let body = Body {
        cx,
        cy,
        keys: vec![
            key(-0.1, 58.0, 52.0, 62.0, fat, 10.0),
            key(0.18, 60.0, 62.0, 66.0, fat, 9.0),
            key(0.4, 68.0, 90.0, 74.0, fat * 0.8, 6.0),
            key(0.58, 72.0, 96.0, 88.0, fat * 0.6, 3.0),
            key(1.1, 74.0, 96.0, 100.0, fat * 0.4, 2.0),
        ],
        harmonics: [rng.range(-0.02, 0.02), 0.0, rng.range(-0.015, 0.015), 0.0, 0.0, 0.0],
        flat_back: rng.range(0.0, 0.2),
        skin: pal.skin(),
        fat: pal.fat(),
        muscle: pal.muscle(),
        // Neck and face: a mix of muscle and fat planes.
        inner: Tissue::new(15.0, 12.0, 45.0),
    };
    let fov = rng.range(220.0, 260.0);
    let px = fov / nx as f64;
    let dz = h / nz as f64;
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
    let j = |rng: &mut Rng, v: f64| v * rng.range(0.9, 1.1);
    let ys = cy + 8.0 * s; // cervical vertebral bodies and the brainstem axis
    let face = cy - 96.0 * s; // front of the face at orbit level
    let mut items = Vec::new();
    add_table(&mut items, &body, -0.2 * h, 1.2 * h, rng);

    // Muscles of the neck and jaw.
    let spine = Spine {
        x: cx,
        y: ys,
        z0: -0.2 * h,
        z1: 0.44 * h,
        period: 17.0 * s,
        phase: rng.range(0.0, 17.0),
        body_r: [9.5 * s, 8.0 * s],
        canal_r: 7.5 * s,
        cord_bottom: -100.0,
        cord_label: CORD,
        spinous: 22.0 * s,
        transverse: 24.0 * s,
    };
    add_back_muscles(&mut items, &body, &spine, -0.2 * h, 0.36 * h, &pal);
    for side in [-1.0, 1.0] {
        let scm = [
            [cx + side * 54.0 * s, ys + 12.0, 0.55 * h],
            [cx + side * 20.0 * s, cy - 45.0 * s, -0.2 * h],
        ];
        add_tube(
            &mut items,
            &scm,
            &[9.0 * s, 7.0 * s],
            1.0,
            pal.muscle(),
            LabelMode::Clear,
        );
        let masseter = Ellipsoid::new(
            [cx + side * 54.0 * s, cy - 30.0 * s, 0.4 * h],
            [8.0, 17.0 * s, 0.13 * h],
            side * 0.15,
            0.0,
            0.06,
            rng,
        );
        items.push(Item::new(Shape::Ellipsoid(masseter), pal.muscle(), LabelMode::Clear));
        let pterygoid = Ellipsoid::new(
            [cx + side * 33.0 * s, cy - 24.0 * s, 0.42 * h],
            [7.0, 15.0 * s, 0.11 * h],
            -side * 0.4,
            0.0,
            0.06,
            rng,
        );
        items.push(Item::new(Shape::Ellipsoid(pterygoid), pal.muscle(), LabelMode::Clear));
    }
    let tongue = Ellipsoid::new(
        [cx, cy - 52.0 * s, 0.33 * h],
        [30.0 * s, 33.0 * s, 0.1 * h],
        0.0,
        0.0,
        0.06,
        rng,
    );
    items.push(Item::new(Shape::Ellipsoid(tongue), pal.muscle(), LabelMode::Clear));
    let prevertebral = [[cx, ys - 14.0, -0.2 * h], [cx, ys - 14.0, 0.5 * h]];
    add_tube(
        &mut items,
        &prevertebral,
        &[9.0, 9.0],
        1.0,
        pal.muscle(),
        LabelMode::Clear,
    );

    // Airway: nasopharynx to larynx, the larynx cartilage, hyoid.
    let airway = [
        [cx, cy - 70.0 * s, 0.6 * h],
        [cx, ys - 24.0, 0.52 * h],
        [cx, ys - 24.0, 0.36 * h],
        [cx, ys - 22.0, 0.2 * h],
        [cx, cy - 30.0 * s, 0.06 * h],
        [cx, cy - 28.0 * s, -0.2 * h],
    ];
    let ar = [7.0 * s, 9.0 * s, 8.0 * s, 8.0 * s, 7.0 * s, 7.5 * s];
    add_tube(&mut items, &airway, &ar, 1.0, pal.air(), LabelMode::Clear);
    for side in [-1.0, 1.0] {
        let lamina = Capsule {
            a: [cx, cy - 46.0 * s, 0.04 * h],
            b: [cx + side * 20.0 * s, cy - 24.0 * s, 0.04 * h],
            ra: 2.2,
            rb: 2.0,
            zscale: 5.0,
        };
        items.push(Item::new(
            Shape::Capsule(lamina),
            Tissue::new(220.0, 60.0, 20.0),
            LabelMode::Clear,
        ));
    }
    let hyoid: Vec<P3> = (0..7)
        .map(|k| {
            let t = -0.5 * PI + PI * k as f64 / 6.0;
            [
                cx + 20.0 * s * t.sin(),
                cy - 42.0 * s + 14.0 * s * (1.0 - t.cos()),
                0.16 * h,
            ]
        })
        .collect();
    add_tube(&mut items, &hyoid, &[2.5; 7], 1.0, pal.bone(), LabelMode::Clear);
    for side in [-1.0, 1.0] {
        let thyroid = Ellipsoid::new(
            [cx + side * 17.0 * s, cy - 28.0 * s, -0.08 * h],
            [8.0, 10.0, 0.12 * h],
            0.0,
            0.0,
            0.08,
            rng,
        );
        let t = Tissue::new(if pal.contrast { 150.0 } else { 100.0 }, 6.0, 4.0);
        items.push(Item::new(Shape::Ellipsoid(thyroid), t, LabelMode::Clear));
    }

    // Carotid arteries and jugular veins.
    for side in [-1.0, 1.0] {
        let car = [
            [cx + side * 22.0 * s, ys - 14.0, -0.2 * h],
            [cx + side * 26.0 * s, ys - 8.0, 0.5 * h],
        ];
        add_tube(&mut items, &car, &[4.0, 3.5], 1.0, pal.blood(), LabelMode::Clear);
        let jug = [
            [cx + side * 32.0 * s, ys - 6.0, -0.2 * h],
            [cx + side * 36.0 * s, ys + 2.0, 0.5 * h],
        ];
        add_tube(&mut items, &jug, &[6.0, 5.0], 1.0, pal.vein(), LabelMode::Clear);
    }

    // Salivary glands.
    let gland = |c: f32| Tissue::new(c, 10.0, 6.0);
    for (side, label) in [(1.0, SUBMAND_L), (-1.0, SUBMAND_R)] {
        let e = Ellipsoid::new(
            [cx + side * 33.0 * s, cy - 36.0 * s, 0.24 * h],
            [j(rng, 12.0), j(rng, 15.0), j(rng, 0.09 * h)],
            side * 0.3,
            0.0,
            0.1,
            rng,
        );
        items.push(Item::new(
            Shape::Ellipsoid(e),
            gland(if pal.contrast { 85.0 } else { 45.0 }),
            LabelMode::Set(label),
        ));
    }
    for (side, label) in [(1.0, PAROTID_L), (-1.0, PAROTID_R)] {
        let superficial = Ellipsoid::new(
            [cx + side * 56.0 * s, cy - 8.0 * s, 0.44 * h],
            [j(rng, 11.0), j(rng, 21.0), j(rng, 0.17 * h)],
            side * 0.2,
            0.0,
            0.1,
            rng,
        );
        let deep = Ellipsoid::new(
            [cx + side * 42.0 * s, cy - 4.0 * s, 0.42 * h],
            [9.0, 11.0, 0.1 * h],
            0.0,
            0.0,
            0.1,
            rng,
        );
        let p = Shape::Union(vec![Shape::Ellipsoid(superficial), Shape::Ellipsoid(deep)])
            .intersect(Shape::Cavity { inset: 0.0 });
        items.push(Item::new(
            p,
            gland(if pal.contrast { 30.0 } else { 8.0 }),
            LabelMode::Set(label),
        ));
    }

    // Cervical spine and cord (the cord ends at the foramen magnum, where the brainstem begins).
    let mut cervical = spine;
    cervical.cord_bottom = -100.0;
    add_spine(&mut items, &cervical, &pal, rng);

    // Mandible: body along a U, rami rising to the joints; teeth on both arches.
    let z_mand = 0.32 * h;
    let arch = |phi: f64, w: f64, front: f64, back: f64| -> (f64, f64) {
        (
            cx + w * phi.sin(),
            front + (back - front) * (1.0 - phi.cos()) / (1.0 - (0.5 * PI).cos()),
        )
    };
    let mand_front = cy - 86.0 * s;
    let mand_back = cy - 30.0 * s;
    let body_pts: Vec<P3> = (0..=12)
        .map(|k| {
            let phi = -0.55 * PI + 1.1 * PI * k as f64 / 12.0;
            let (x, y) = arch(phi, 46.0 * s, mand_front, mand_back);
            [x, y, z_mand]
        })
        .collect();
    let bone_dense = pal.bone().rim(2.5, 1400.0);
    let mand_t = Tissue {
        hu: 450.0,
        ..bone_dense
    };
    add_tube(
        &mut items,
        &body_pts,
        &vec![4.6 * s; body_pts.len()],
        2.8,
        mand_t,
        LabelMode::Set(MANDIBLE),
    );
    for side in [-1.0, 1.0] {
        let angle = body_pts[if side > 0.0 { 12 } else { 0 }];
        for dy in [-6.0, 6.0] {
            let ramus = [
                [angle[0], angle[1] + dy, angle[2] - 5.0],
                [angle[0] + side * 2.0, angle[1] + dy + 10.0, 0.5 * h],
                [angle[0] + side * 3.0, angle[1] + dy * 0.4 + 16.0, 0.58 * h],
            ];
            add_tube(
                &mut items,
                &ramus,
                &[5.0, 4.0, 4.5],
                1.0,
                mand_t,
                LabelMode::Set(MANDIBLE),
            );
        }
    }
    let teeth = Tissue::new(1800.0, 120.0, 0.0).rim(1.2, 2600.0);
    for (z, w, front, back) in [
        (0.4 * h, 42.0, mand_front + 4.0, mand_back - 2.0),
        (0.47 * h, 40.0, cy - 84.0 * s, cy - 34.0 * s),
    ] {
        for k in 0..14 {
            let phi = -0.5 * PI + PI * (k as f64 + 0.5) / 14.0;
            let (x, y) = arch(phi, w * s, front, back);
            let r = if (3..=10).contains(&k) { 3.0 } else { 4.2 };
            let tooth = Ellipsoid::new([x, y, z], [r, r, 0.045 * h], 0.0, 0.0, 0.08, rng);
            items.push(Item::new(Shape::Ellipsoid(tooth), teeth, LabelMode::Clear));
        }
    }
    // Hard palate: a thin bony plate above the upper teeth.
    let palate = Ellipsoid::new(
        [cx, cy - 58.0 * s, 0.51 * h],
        [24.0 * s, 26.0 * s, 2.5],
        0.0,
        0.0,
        0.05,
        rng,
    );
    items.push(Item::new(Shape::Ellipsoid(palate), pal.bone(), LabelMode::Clear));

    // Maxillary sinuses and nasal cavity (air in thin bone), the nasal septum.
    for side in [-1.0, 1.0] {
        let sinus = Ellipsoid::new(
            [cx + side * 28.0 * s, cy - 64.0 * s, 0.58 * h],
            [16.0 * s, 19.0 * s, 0.09 * h],
            0.0,
            0.0,
            0.06,
            rng,
        );
        items.push(Item::new(
            Shape::Ellipsoid(sinus),
            pal.air().rim(1.6, 650.0),
            LabelMode::Clear,
        ));
    }
    let nasal = Ellipsoid::new(
        [cx, cy - 72.0 * s, 0.58 * h],
        [12.0 * s, 24.0 * s, 0.1 * h],
        0.0,
        0.0,
        0.04,
        rng,
    );
    items.push(Item::new(Shape::Ellipsoid(nasal), pal.air(), LabelMode::Clear));
    let septum = Capsule {
        a: [cx, cy - 94.0 * s, 0.58 * h],
        b: [cx, cy - 50.0 * s, 0.58 * h],
        ra: 1.2,
        rb: 1.2,
        zscale: 10.0,
    };
    items.push(Item::new(Shape::Capsule(septum), pal.bone(), LabelMode::Clear));

    // Brain inside the skull: cerebrum above the skull base, temporal lobes and cerebellum lower.
    let skull_in = 4.5 + 6.0; // scalp, then bone
    let cerebrum = Ellipsoid::new(
        [cx, cy + 4.0, 1.05 * h],
        [80.0 * s, 104.0 * s, 0.4 * h],
        0.0,
        0.0,
        0.03,
        rng,
    );
    let mut brain_parts = vec![Shape::Ellipsoid(cerebrum)];
    for side in [-1.0, 1.0] {
        let temporal = Ellipsoid::new(
            [cx + side * 46.0 * s, cy - 8.0, 0.62 * h],
            [24.0, 36.0, 0.12 * h],
            0.0,
            0.0,
            0.05,
            rng,
        );
        brain_parts.push(Shape::Ellipsoid(temporal));
    }
    let cerebellum = Ellipsoid::new(
        [cx, ys + 42.0 * s, 0.58 * h],
        [50.0 * s, 32.0 * s, 0.13 * h],
        0.0,
        0.0,
        0.04,
        rng,
    );
    brain_parts.push(Shape::Ellipsoid(cerebellum));
    let brain_tissue = Tissue::new(34.0, 3.0, 6.0);
    for part in brain_parts {
        items.push(Item::new(
            part.intersect(Shape::Cavity { inset: skull_in - 3.0 }),
            brain_tissue,
            LabelMode::Clear,
        ));
    }
    // Skull: the vault behind the face everywhere above the skull base, the whole ring higher up.
    let skull = pal.bone().rim(1.8, 1300.0);
    let skull = Tissue { hu: 650.0, ..skull };
    let band = Shape::Band {
        inner: 2.0 + fat * 0.5 + 2.5,
        outer: 2.0 + fat * 0.5 + 2.5 + 6.5,
    };
    // Behind y_cut(z) = cy - 45 + 1.2 (0.72 h - z): only the occipital and mastoid region at the
    // skull base, reaching forward to the temples at the orbits.
    let (unit_y, unit_z) = (1.0 / 1.2f64.hypot(1.0), 1.2 / 1.2f64.hypot(1.0));
    let vault_back = band
        .clone()
        .intersect(Shape::HalfSpace {
            n: [0.0, -unit_y, -unit_z],
            offset: -(cy - 45.0 * s + 1.2 * 0.72 * h) * unit_y,
        })
        .intersect(Shape::HalfSpace {
            n: [0.0, 0.0, -1.0],
            offset: -0.5 * h,
        })
        .intersect(Shape::Cylinder {
            center: [cx, cy],
            radii: [200.0, 200.0],
            z0: 0.5 * h,
            z1: 1.3 * h,
        });
    items.push(Item::new(vault_back, skull, LabelMode::Clear));
    let vault_top = band.intersect(Shape::Cylinder {
        center: [cx, cy],
        radii: [200.0, 200.0],
        z0: 0.86 * h,
        z1: 1.3 * h,
    });
    items.push(Item::new(vault_top, skull, LabelMode::Clear));
    // Skull base: petrous ridges, clivus, the sphenoid sinus, mastoid air cells.
    for side in [-1.0, 1.0] {
        let petrous = [
            [cx + side * 48.0 * s, ys + 12.0, 0.56 * h],
            [cx + side * 20.0 * s, ys - 6.0, 0.6 * h],
        ];
        add_tube(
            &mut items,
            &petrous,
            &[5.0, 2.5],
            1.2,
            Tissue::new(1100.0, 120.0, 40.0),
            LabelMode::Clear,
        );
        let mastoid = Ellipsoid::new(
            [cx + side * 44.0 * s, ys + 14.0, 0.5 * h],
            [6.0, 8.0, 0.05 * h],
            0.0,
            0.0,
            0.1,
            rng,
        );
        items.push(Item::new(
            Shape::Ellipsoid(mastoid),
            Tissue::new(-300.0, 600.0, 80.0),
            LabelMode::Clear,
        ));
    }
    let clivus = [[cx, ys - 14.0, 0.46 * h], [cx, ys - 28.0, 0.64 * h]];
    add_tube(
        &mut items,
        &clivus,
        &[6.0, 7.0],
        1.0,
        pal.bone().rim(1.5, 1000.0),
        LabelMode::Clear,
    );
    let sphenoid = Ellipsoid::new(
        [cx, ys - 44.0 * s, 0.64 * h],
        [15.0, 12.0, 0.07 * h],
        0.0,
        0.0,
        0.05,
        rng,
    );
    items.push(Item::new(
        Shape::Ellipsoid(sphenoid),
        pal.air().rim(1.6, 900.0),
        LabelMode::Clear,
    ));
    let pituitary = Ellipsoid::new([cx, ys - 36.0 * s, 0.71 * h], [6.0, 5.0, 4.0], 0.0, 0.0, 0.0, rng);
    items.push(Item::new(
        Shape::Ellipsoid(pituitary),
        Tissue::new(60.0, 3.0, 1.0),
        LabelMode::Clear,
    ));

    // Brainstem in its cisterns, the fourth ventricle behind it.
    let stem = [
        [cx, ys + 2.0, 0.47 * h],
        [cx, ys - 2.0, 0.56 * h],
        [cx, ys - 4.0, 0.66 * h],
        [cx, ys - 2.0, 0.8 * h],
    ];
    add_tube(
        &mut items,
        &stem,
        &[11.0 * s, 14.0 * s, 14.0 * s, 12.0 * s],
        1.0,
        pal.csf(),
        LabelMode::Clear,
    );
    add_tube(
        &mut items,
        &stem,
        &[8.0 * s, 10.5 * s, 11.5 * s, 10.0 * s],
        1.0,
        Tissue::new(32.0, 3.0, 2.0),
        LabelMode::Set(BRAINSTEM),
    );
    let v4 = Ellipsoid::new([cx, ys + 16.0 * s, 0.58 * h], [5.0, 3.5, 0.05 * h], 0.0, 0.0, 0.0, rng);
    items.push(Item::new(Shape::Ellipsoid(v4), pal.csf(), LabelMode::Clear));

    // Orbits: fat cone, eye muscles, globe with lens, lateral walls; optic nerves to the chiasm.
    let z_orb = 0.72 * h + rng.range(-3.0, 3.0);
    let chiasm_c = [cx, ys - 40.0 * s, z_orb + 2.0];
    for (side, label) in [(1.0, OPTIC_L), (-1.0, OPTIC_R)] {
        let globe_c = [cx + side * 31.0 * s, face + 19.0 * s, z_orb];
        let cone = Ellipsoid::new(
            [globe_c[0] - side * 2.0, globe_c[1] + 18.0 * s, z_orb],
            [17.0 * s, 28.0 * s, 15.0],
            -side * 0.25,
            0.0,
            0.05,
            rng,
        );
        items.push(Item::new(Shape::Ellipsoid(cone), pal.fat(), LabelMode::Clear));
        for dx in [-1.0, 1.0] {
            let m = [
                [globe_c[0] + dx * 11.0 * s, globe_c[1] + 6.0, z_orb],
                [globe_c[0] - side * 6.0 + dx * 4.0, globe_c[1] + 36.0 * s, z_orb],
            ];
            add_tube(&mut items, &m, &[2.8, 2.0], 1.0, pal.muscle(), LabelMode::Clear);
        }
        let wall = Capsule {
            a: [globe_c[0] + side * 16.0 * s, face + 16.0 * s, z_orb - 6.0],
            b: [globe_c[0] + side * 8.0 * s, face + 50.0 * s, z_orb + 4.0],
            ra: 2.8,
            rb: 2.2,
            zscale: 3.0,
        };
        // Kept under the skin of the temple.
        let wall = Shape::Capsule(wall).intersect(Shape::Cavity { inset: -2.0 });
        items.push(Item::new(wall, pal.bone().rim(1.2, 1000.0), LabelMode::Clear));
        let globe = Ellipsoid::new(globe_c, [12.0 * s, 12.0 * s, 12.0 * s], 0.0, 0.0, 0.01, rng);
        items.push(Item::new(
            Shape::Ellipsoid(globe),
            Tissue::new(10.0, 2.0, 1.0).rim(1.0, 45.0),
            LabelMode::Clear,
        ));
        let lens = Ellipsoid::new(
            [globe_c[0], globe_c[1] - 9.5 * s, z_orb],
            [4.5, 2.0, 4.5],
            0.0,
            0.0,
            0.0,
            rng,
        );
        items.push(Item::new(
            Shape::Ellipsoid(lens),
            Tissue::new(110.0, 3.0, 1.0),
            LabelMode::Clear,
        ));
        let back = [globe_c[0] - side * 1.0, globe_c[1] + 12.0 * s, z_orb];
        let canal = [cx + side * 12.0 * s, chiasm_c[1] - 12.0 * s, z_orb + 1.0];
        let end = [cx + side * 5.0 * s, chiasm_c[1] - 1.0, chiasm_c[2]];
        let nerve = [
            back,
            [0.5 * (back[0] + canal[0]), 0.5 * (back[1] + canal[1]) + 2.0, z_orb],
            canal,
            end,
        ];
        add_tube(
            &mut items,
            &nerve,
            &[2.4, 2.2, 2.0, 1.9],
            1.0,
            Tissue::new(30.0, 2.0, 1.0),
            LabelMode::Set(label),
        );
    }
    // Chiasm: a small flat X above the pituitary.
    for side in [-1.0, 1.0] {
        let limb = Capsule {
            a: [cx + side * 6.0 * s, chiasm_c[1] - 3.0, chiasm_c[2]],
            b: [cx - side * 6.0 * s, chiasm_c[1] + 4.0, chiasm_c[2]],
            ra: 2.0,
            rb: 2.0,
            zscale: 1.0,
        };
        items.push(Item::new(
            Shape::Capsule(limb),
            Tissue::new(30.0, 2.0, 1.0),
            LabelMode::Set(CHIASM),
        ));
    }
    // Ethmoid air cells between the orbits.
    let ethmoid = Ellipsoid::new(
        [cx, face + 32.0 * s, z_orb],
        [8.0 * s, 17.0 * s, 12.0],
        0.0,
        0.0,
        0.05,
        rng,
    );
    items.push(Item::new(
        Shape::Ellipsoid(ethmoid),
        Tissue::new(-550.0, 650.0, 60.0),
        LabelMode::Clear,
    ));

    let scene = Scene {
        body,
        items,
        // Head protocols use a higher dose: less noise than the body.
        noise_sigma: rng.range(4.0, 7.0) as f32,
        warp_mm: rng.range(1.5, 3.0),
    };
    (scene, grid)
}
