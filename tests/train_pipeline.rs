//! The training pipelines end to end on tiny synthetic data (CPU): losses fall, runs resume
//! step for step, predictions keep the input's geometry.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use lrc::data::dataset::discover;
use lrc::data::nifti::{read_labels, read_volume};
use lrc::data::prep::PrepConfig;
use lrc::data::store::{SliceStore, StoreOptions, write_store};
use lrc::data::synth::{DatasetOptions, Region, SynthConfig, write_dataset};
use lrc::nn::UNetConfig;
use lrc::superpixel::{SuperpixelConfig, regions_for_slice};
use lrc::train::finetune::{FinetuneConfig, FinetuneOptions, Segmenter, finetune};
use lrc::train::pretrain::{Method, PretrainConfig, PretrainState, RunOptions, pretrain};

struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    store: Arc<SliceStore>,
}

/// One labelled synthetic dataset and its store with regions, shared by the tests.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("abdomen");
        let cfg = SynthConfig {
            region: Region::Abdomen,
            slices: 10,
            size: 64,
            seed: 5,
        };
        let opts = DatasetOptions {
            cases: 4,
            unlabeled: false,
            threads: 0,
            preview: false,
            progress: false,
        };
        write_dataset(&cfg, &data, &opts).unwrap();
        let sp = SuperpixelConfig::default();
        let prep = PrepConfig {
            spacing: [8.0, 4.0, 4.0],
            regions: Some(Arc::new(move |img: &[f32], h: usize, w: usize| {
                regions_for_slice(img, h, w, &sp)
            })),
            ..PrepConfig::default()
        };
        let store_dir = dir.path().join("store");
        write_store(&discover(&data).unwrap(), &store_dir, &prep, &StoreOptions::default()).unwrap();
        let store = Arc::new(SliceStore::open(&store_dir).unwrap());
        Fixture { _dir: dir, data, store }
    })
}

fn tiny_unet() -> UNetConfig {
    UNetConfig {
        in_channels: 1,
        base_width: 4,
        depth: 3,
        max_width: 64,
    }
}

fn pretrain_config(method: Method, steps: u64) -> PretrainConfig {
    let mut c = PretrainConfig::thesis(method);
    c.unet = tiny_unet();
    c.steps = steps;
    c.batch = 2;
    c.crop = 32;
    c.queue = 8;
    c.embed_dim = 4;
    c.samples = 4;
    c.checkpoint_every = 1000;
    c.log_every = 1000;
    c.lr = if method == Method::Global { 0.03 } else { 1e-3 };
    c
}

fn run_opts(out: &Path, stop_after: Option<u64>) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        resume: true,
        metrics: None,
        quiet: true,
        stop_after,
        device: lrc::device::Device::Cpu,
    }
}

fn params_of(path: &Path) -> Vec<Vec<f32>> {
    let s = PretrainState::load(path).unwrap();
    s.params
        .params()
        .iter()
        .map(|p| p.value.to_f32_vec().unwrap())
        .collect()
}

#[test]
fn local_pretraining_loss_falls() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut c = pretrain_config(Method::Local, 80);
    c.lr = 3e-3;
    c.log_every = 20;
    let s = pretrain(f.store.clone(), c.clone(), &run_opts(&dir.path().join("l.st"), None)).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let s2 = pretrain(f.store.clone(), c, &run_opts(&dir2.path().join("l.st"), None)).unwrap();
    assert_eq!(s.last_loss, s2.last_loss, "same seed, same run");
    let windows: Vec<f64> = s2.losses.iter().map(|&(_, l)| l).collect();
    assert_eq!(windows.len(), 4);
    // Mean loss over steps 61-80 below steps 1-20: the network separates regions.
    assert!(windows[3] < windows[0], "local loss did not fall: {windows:?}");
}

#[test]
fn fusing_the_pixel_normalization_into_the_loss_trains_the_same() {
    // Normalising only the sampled pixels inside the loss is the same function as normalising
    // every pixel first: the runs agree to rounding (f32 sums in another order), step by step.
    let f = fixture();
    for method in [Method::Local, Method::Joint] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = pretrain_config(method, 6);
        c.log_every = 1;
        let plain = pretrain(f.store.clone(), c.clone(), &run_opts(&dir.path().join("a.st"), None)).unwrap();
        c.fuse_pixel_normalization = true;
        let fused = pretrain(f.store.clone(), c, &run_opts(&dir.path().join("b.st"), None)).unwrap();
        assert_eq!(plain.losses.len(), fused.losses.len());
        for ((step, a), (_, b)) in plain.losses.iter().zip(&fused.losses) {
            assert!(
                (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                "{method:?} step {step}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn pretraining_resumes_step_for_step() {
    let f = fixture();
    for method in [Method::Global, Method::Local, Method::Joint] {
        let dir = tempfile::tempdir().unwrap();
        let straight = dir.path().join("straight.st");
        let split = dir.path().join("split.st");
        pretrain(f.store.clone(), pretrain_config(method, 4), &run_opts(&straight, None)).unwrap();
        pretrain(f.store.clone(), pretrain_config(method, 4), &run_opts(&split, Some(2))).unwrap();
        assert_eq!(PretrainState::load(&split).unwrap().step, 2);
        pretrain(f.store.clone(), pretrain_config(method, 4), &run_opts(&split, None)).unwrap();
        assert_eq!(
            params_of(&straight),
            params_of(&split),
            "{method:?}: resumed run differs"
        );
        if method != Method::Local {
            let (a, b) = (
                PretrainState::load(&straight).unwrap(),
                PretrainState::load(&split).unwrap(),
            );
            let qa = a.queue.unwrap().negatives().unwrap().to_f32_vec().unwrap();
            let qb = b.queue.unwrap().negatives().unwrap().to_f32_vec().unwrap();
            assert_eq!(qa, qb, "{method:?}: MoCo queue differs after resuming");
        }
    }
}

#[test]
fn resuming_with_other_options_is_refused() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.st");
    pretrain(
        f.store.clone(),
        pretrain_config(Method::Global, 2),
        &run_opts(&out, None),
    )
    .unwrap();
    let mut other = pretrain_config(Method::Global, 2);
    other.temperature = 0.2;
    let err = pretrain(f.store.clone(), other, &run_opts(&out, None))
        .unwrap_err()
        .to_string();
    // The refusal names the setting that differs, saved and asked.
    assert!(
        err.contains("g.st") && err.contains("temperature: ") && err.contains("-> 0.2"),
        "{err}"
    );
    // How often a run logs and saves is no part of what it computes: those may change.
    let mut cadence = pretrain_config(Method::Global, 2);
    cadence.log_every = 1;
    cadence.checkpoint_every = 1;
    pretrain(f.store.clone(), cadence, &run_opts(&out, None)).unwrap();
}

fn finetune_config(epochs: usize) -> FinetuneConfig {
    FinetuneConfig {
        unet: tiny_unet(),
        train_cases: 2,
        val_cases: 1,
        epochs,
        steps_per_epoch: 10,
        batch: 2,
        crop: 32,
        lr: 3e-3,
        patience: 100,
        ..FinetuneConfig::thesis()
    }
}

#[test]
fn finetuning_learns_resumes_and_predicts_in_the_input_geometry() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let opts = |out: &Path, stop_after| FinetuneOptions {
        out: out.to_path_buf(),
        resume: true,
        metrics: None,
        quiet: true,
        stop_after,
        device: lrc::device::Device::Cpu,
    };
    let straight = dir.path().join("a.st");
    let s = finetune(f.store.clone(), finetune_config(4), &opts(&straight, None)).unwrap();
    let losses: Vec<f64> = s.epochs.iter().map(|e| e.train_loss).collect();
    assert!(losses[3] < losses[0], "Dice loss did not fall: {losses:?}");
    // Killed after two epochs and resumed: the same model as the uninterrupted run.
    let split = dir.path().join("b.st");
    finetune(f.store.clone(), finetune_config(4), &opts(&split, Some(2))).unwrap();
    let s2 = finetune(f.store.clone(), finetune_config(4), &opts(&split, None)).unwrap();
    assert_eq!(s.epochs.len(), s2.epochs.len());
    for (a, b) in s.epochs.iter().zip(&s2.epochs) {
        assert_eq!(a.train_loss, b.train_loss, "epoch {}", a.epoch);
    }
    let (ma, _) = Segmenter::load(&straight).unwrap();
    let (mb, _) = Segmenter::load(&split).unwrap();
    for (pa, pb) in ma.params.params().iter().zip(mb.params.params()) {
        assert_eq!(
            pa.value.to_f32_vec().unwrap(),
            pb.value.to_f32_vec().unwrap(),
            "{}",
            pa.name
        );
    }
    // Prediction: a mask with exactly the input's shape and affine, labels within the classes.
    let image = f.data.join("imagesTr/abdomen_003_0000.nii.gz");
    let mask = dir.path().join("mask.nii.gz");
    lrc::cli::predict::run(&straight, &image, &mask, 4, &lrc::device::Device::Cpu).unwrap();
    let (vol, pred) = (read_volume(&image).unwrap(), read_labels(&mask).unwrap());
    assert_eq!(pred.geometry.dims, vol.geometry.dims);
    assert_eq!(pred.geometry.affine, vol.geometry.affine);
    assert!(pred.data.iter().all(|&l| (l as usize) < ma.classes));
}

#[test]
fn a_pretraining_checkpoint_is_not_a_segmentation_model() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.st");
    pretrain(
        f.store.clone(),
        pretrain_config(Method::Global, 1),
        &run_opts(&out, None),
    )
    .unwrap();
    let err = Segmenter::load(&out).err().expect("must fail").to_string();
    assert!(
        err.contains("g.st") && err.contains("not a segmentation model"),
        "{err}"
    );
}

/// Images of a batch are built in parallel from their own generators: the batch is the same
/// with one thread or several, and image `i` does not depend on the batch size.
#[test]
fn batches_do_not_depend_on_the_threads_that_build_them() {
    use lrc::augment::elastic::ElasticParams;
    use lrc::augment::intensity::IntensityParams;
    use lrc::train::batch::{Batch, BatchKind, BatchSpec, build_batch};

    let store = &fixture().store;
    let spec = |batch: usize| BatchSpec {
        kind: BatchKind::Joint {
            elastic: ElasticParams::default(),
            intensity: IntensityParams::default(),
            n: 4,
            max_regions: Some(16),
        },
        batch,
        crop: (32, 32),
        pool: Arc::new((0..store.len()).collect()),
        seed: 11,
    };
    let build = |threads: usize, batch: usize| -> Batch {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| build_batch(store, &spec(batch), 7)).unwrap()
    };
    let (one, three) = (build(1, 5), build(3, 5));
    let values = |b: &Batch| {
        (
            b.x.to_f32_vec().unwrap(),
            b.x_pos.as_ref().unwrap().to_f32_vec().unwrap(),
        )
    };
    assert_eq!(values(&one), values(&three), "images built on 1 and 3 threads");
    assert_eq!(one.samples, three.samples, "region samples built on 1 and 3 threads");
    assert_eq!(one.cases, three.cases);
    let two = build(2, 2);
    let image = 32 * 32;
    assert_eq!(
        two.x.to_f32_vec().unwrap(),
        values(&one).0[..2 * image],
        "the first images of a larger batch"
    );
    assert_eq!(two.samples[..], one.samples[..2]);
}

/// Mistakes that would lose work are refused before any training: an output that is an input,
/// an output that is a folder, a resume with nothing to resume, a finished run whose model is
/// gone, a loss that stops being finite, a learning rate that is no number.
#[test]
fn outputs_that_would_lose_work_are_refused() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let opts = |out: &Path, resume: bool| FinetuneOptions {
        out: out.to_path_buf(),
        resume,
        metrics: None,
        quiet: true,
        stop_after: None,
        device: lrc::device::Device::Cpu,
    };
    let err = |r: lrc::Result<lrc::train::finetune::FinetuneSummary>| r.expect_err("must fail").to_string();
    // The fine-tuned model over its own initialisation.
    let local = dir.path().join("local.st");
    std::fs::write(&local, b"pre-trained").unwrap();
    let mut cfg = finetune_config(1);
    cfg.init.local = Some(local.clone());
    let e = err(finetune(
        f.store.clone(),
        cfg,
        &opts(&dir.path().join("./local.st"), false),
    ));
    assert!(e.contains("is also an input"), "{e}");
    assert_eq!(std::fs::read(&local).unwrap(), b"pre-trained");
    // A folder for a file.
    let e = err(finetune(f.store.clone(), finetune_config(1), &opts(dir.path(), false)));
    assert!(e.contains("is a folder"), "{e}");
    // --resume where the model exists but its state does not.
    let lone = dir.path().join("lone.st");
    std::fs::write(&lone, b"someone's model").unwrap();
    let e = err(finetune(f.store.clone(), finetune_config(1), &opts(&lone, true)));
    assert!(e.contains("nothing to resume"), "{e}");
    assert_eq!(std::fs::read(&lone).unwrap(), b"someone's model");
    // A finished run whose model was deleted: resuming must not report a write it never made.
    let done = dir.path().join("done.st");
    finetune(f.store.clone(), finetune_config(1), &opts(&done, true)).unwrap();
    std::fs::remove_file(&done).unwrap();
    let e = err(finetune(f.store.clone(), finetune_config(1), &opts(&done, true)));
    assert!(e.contains("is missing"), "{e}");
    // A learning rate that is no number, and one that makes the loss blow up.
    let mut cfg = finetune_config(1);
    cfg.lr = f64::NAN;
    let e = err(finetune(f.store.clone(), cfg, &opts(&dir.path().join("nan.st"), false)));
    assert!(e.contains("learning rate must be positive"), "{e}");
    let mut cfg = finetune_config(1);
    cfg.lr = 1e30;
    let e = err(finetune(
        f.store.clone(),
        cfg,
        &opts(&dir.path().join("huge.st"), false),
    ));
    assert!(e.contains("the loss became"), "{e}");
    // Pre-training: at least two regions for a contrast.
    let mut cfg = pretrain_config(Method::Local, 1);
    cfg.max_regions = Some(1);
    let e = pretrain(f.store.clone(), cfg, &run_opts(&dir.path().join("p.st"), None))
        .expect_err("must fail")
        .to_string();
    assert!(e.contains("--max-regions must be at least 2"), "{e}");
}

/// `lrc predict` never writes over its input, and refuses a folder where two files name one case.
#[test]
fn prediction_never_overwrites_an_input() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.st");
    let opts = FinetuneOptions {
        out: model.clone(),
        resume: false,
        metrics: None,
        quiet: true,
        stop_after: None,
        device: lrc::device::Device::Cpu,
    };
    finetune(f.store.clone(), finetune_config(1), &opts).unwrap();
    let cpu = lrc::device::Device::Cpu;
    let image = dir.path().join("ct.nii.gz");
    std::fs::copy(f.data.join("imagesTr/abdomen_003_0000.nii.gz"), &image).unwrap();
    let before = std::fs::read(&image).unwrap();
    let e = lrc::cli::predict::run(&model, &image, &image, 4, &cpu)
        .expect_err("must fail")
        .to_string();
    assert!(e.contains("is also an input"), "{e}");
    assert_eq!(std::fs::read(&image).unwrap(), before);
    // b_0000.nii.gz and b.nii.gz are both case "b".
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(&image, input.join("b_0000.nii.gz")).unwrap();
    std::fs::copy(&image, input.join("b.nii.gz")).unwrap();
    let e = lrc::cli::predict::run(&model, &input, &dir.path().join("out"), 4, &cpu)
        .expect_err("must fail")
        .to_string();
    assert!(e.contains("name the same case"), "{e}");
    assert!(!dir.path().join("out/b.nii.gz").exists());
    // A model whose preprocessing record was damaged (an inverted intensity window) is
    // refused when loaded, not used to normalise.
    let (tensors, mut meta) = lrc::checkpoint::load(&model).unwrap();
    let mut prep: serde_json::Value = serde_json::from_str(&meta["prep"]).unwrap();
    let norm = prep["normalization"].as_object_mut().unwrap();
    let (lo, hi) = (norm["lo"].clone(), norm["hi"].clone());
    norm.insert("lo".into(), hi);
    norm.insert("hi".into(), lo);
    meta.insert("prep".into(), prep.to_string());
    let damaged = dir.path().join("damaged.st");
    let tensors: Vec<(String, lrc::tensor::Tensor)> = tensors.into_iter().collect();
    lrc::checkpoint::save(&damaged, &tensors, &meta).unwrap();
    let e = lrc::cli::predict::run(&damaged, &image, &dir.path().join("m2.nii.gz"), 4, &cpu)
        .expect_err("must fail")
        .to_string();
    assert!(
        e.contains("damaged.st") && e.contains("preprocessing record is unusable"),
        "{e}"
    );
}

/// Label planes holding a value their case record does not list (a damaged store) stop
/// fine-tuning with an error naming the store and the case, before any loss sees them.
#[test]
fn labels_beyond_the_records_name_the_store() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("store");
    std::fs::create_dir_all(copy.join("cases")).unwrap();
    for name in ["store.json", "cases.jsonl"] {
        std::fs::copy(f.store.dir().join(name), copy.join(name)).unwrap();
    }
    for record in f.store.cases() {
        let mut bytes = std::fs::read(f.store.dir().join(&record.file)).unwrap();
        let offset = record.labels_offset.expect("a labelled store") as usize;
        bytes[offset..].fill(200);
        std::fs::write(copy.join(&record.file), bytes).unwrap();
    }
    let store = Arc::new(SliceStore::open(&copy).unwrap());
    let opts = FinetuneOptions {
        out: dir.path().join("m.st"),
        resume: false,
        metrics: None,
        quiet: true,
        stop_after: None,
        device: lrc::device::Device::Cpu,
    };
    let e = finetune(store, finetune_config(1), &opts)
        .expect_err("must fail")
        .to_string();
    assert!(
        e.contains("store") && e.contains("holds label 200") && e.contains("damaged"),
        "{e}"
    );
}
