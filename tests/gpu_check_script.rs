//! scripts/gpu-check.sh in its dry mode, against a fake bundle of shell scripts: the summary it
//! writes, the GPU steps reported as not run, and its exit status when a test fails. The real
//! executables are not needed (the script runs whatever the bundle holds), so this stays fast and
//! independent of the build.

use lrc::device::cuda::ConvAlgo;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu-check.sh")
}

fn write_executable(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A libtest-like executable printing one result line and exiting as libtest would.
fn fake_test(passed: usize, failed: usize) -> String {
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    let failed_lines: String = (0..failed)
        .map(|i| format!("echo 'test case_{i} ... FAILED'\n"))
        .collect();
    format!(
        "#!/usr/bin/env bash\necho \"args: $*\"\necho \"emulator: ${{LRC_EMULATOR:-on}}\"\n\
         echo \"running {} tests\"\n{failed_lines}\
         echo \"test result: {verdict}. {passed} passed; {failed} failed; 2 ignored; 0 measured; 0 filtered out; \
         finished in 0.01s\"\nexit {}\n",
        passed + failed,
        (failed > 0) as i32
    )
}

/// A bundle with a fake `lrc` (whose `parity` writes its output file) and the given tests, and a
/// fake python that imports anything and passes any parity check of an existing file.
fn fake_bundle(root: &Path, tests: &[(&str, String)]) -> (PathBuf, PathBuf) {
    let bundle = root.join("bundle");
    fs::create_dir_all(bundle.join("bin")).unwrap();
    write_executable(
        &bundle.join("bin/lrc"),
        "#!/usr/bin/env bash\n[[ $1 == parity && $2 == --out ]] && echo fake > \"$3\" && exit 0\nexit 9\n",
    );
    for (name, text) in tests {
        write_executable(&bundle.join("bin").join(name), text);
    }
    fs::write(bundle.join("COMMIT"), "0123abcd\n2026-11-26T00:00:00Z\n").unwrap();
    let python = root.join("fake-python");
    write_executable(
        &python,
        "#!/usr/bin/env bash\n[[ $1 == -c ]] && exit 0\n[[ $2 == --check && -f $3 ]] || exit 1\n\
         echo 'checked 3 tensors; worst relative error 1.000e-06 (tolerance 1e-04)'\n",
    );
    (bundle, python)
}

/// Runs the script in `--dry` mode from `root`; returns its output and summary.md.
fn run_dry(root: &Path, bundle: &Path, python: &Path) -> (Output, String) {
    let out_dir = root.join("out");
    let output = Command::new("bash")
        .arg(script())
        .arg(&out_dir)
        .arg("--dry")
        .current_dir(root)
        .env("LRC_BUNDLE", bundle)
        .env("LRC_PYTHON", python)
        // A full check exports these for the test executables it runs, this one too: the run
        // under test must not inherit them.
        .env_remove("LRC_EMULATOR")
        .env_remove("LRC_SKIP_SAMPLE_CT")
        .output()
        .expect("run bash");
    let summary = fs::read_to_string(out_dir.join("summary.md")).unwrap_or_else(|e| {
        panic!(
            "no summary.md ({e}); output:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, summary)
}

fn row<'a>(summary: &'a str, first_cell: &str) -> &'a str {
    let prefix = format!("| {first_cell} |");
    summary
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no row for {first_cell} in:\n{summary}"))
}

#[test]
fn a_dry_run_reports_the_tests_and_leaves_the_gpu_steps_out() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, python) = fake_bundle(dir.path(), &[("fake_tests", fake_test(3, 0))]);
    let (output, summary) = run_dry(dir.path(), &bundle, &python);
    assert!(output.status.success(), "exit {:?}:\n{summary}", output.status);
    // Passed, failed, ignored, seconds, status.
    let cells: Vec<&str> = row(&summary, "fake_tests").split('|').map(str::trim).collect();
    assert_eq!(cells[2..5], ["3", "0", "2"], "{summary}");
    assert_eq!(cells[6], "ok");
    // Dry runs leave the ignored (GPU) tests out.
    let log = fs::read_to_string(dir.path().join("out/logs/test-fake_tests.log")).unwrap();
    assert!(!log.contains("--include-ignored"), "{log}");
    // A dry run is where the emulated tests run (they need no GPU).
    assert!(log.contains("emulator: on"), "{log}");
    for step in [
        "memcheck",
        "memcheck lrc-loss",
        "bench lrc",
        "bench torch",
        "bench lrc-loss lrc",
        "bench lrc-loss torch",
        "bench superpixels",
        "bench batch",
        "demo quick",
    ] {
        assert!(row(&summary, step).contains("not run (no GPU)"), "{summary}");
    }
    assert!(row(&summary, "parity").contains("passed"), "{summary}");
    assert!(
        row(&summary, "parity").contains("worst relative error 1.000e-06"),
        "{summary}"
    );
    assert!(summary.contains("0123abcd 2026-11-26T00:00:00Z"), "{summary}");
    assert!(summary.contains("everything that ran passed"), "{summary}");
}

#[test]
fn a_failing_test_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let tests = [("a_good", fake_test(4, 0)), ("b_bad", fake_test(1, 2))];
    let (bundle, python) = fake_bundle(dir.path(), &tests);
    let (output, summary) = run_dry(dir.path(), &bundle, &python);
    assert_eq!(output.status.code(), Some(1), "{summary}");
    assert!(row(&summary, "b_bad").ends_with("| FAILED |"), "{summary}");
    assert!(row(&summary, "a_good").ends_with("| ok |"), "{summary}");
    assert!(
        row(&summary, "**total**").starts_with("| **total** | 5 | 2 | 4 |"),
        "{summary}"
    );
    assert!(summary.contains("- result: FAILED"), "{summary}");
    assert!(summary.contains("- b_bad: FAILED: case_0, case_1\n"), "{summary}");
}

#[test]
fn a_crash_without_a_result_line_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let crash = "#!/usr/bin/env bash\necho 'running 1 test'\nkill -SEGV $$\n".to_string();
    let (bundle, python) = fake_bundle(dir.path(), &[("crashes", crash)]);
    let (output, summary) = run_dry(dir.path(), &bundle, &python);
    assert_eq!(output.status.code(), Some(1), "{summary}");
    assert!(row(&summary, "crashes").contains("CRASHED"), "{summary}");
}

#[test]
fn parity_is_skipped_without_torch() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, _) = fake_bundle(dir.path(), &[("fake_tests", fake_test(1, 0))]);
    let no_python = dir.path().join("no-such-python");
    let (output, summary) = run_dry(dir.path(), &bundle, &no_python);
    assert!(output.status.success(), "{summary}");
    assert!(row(&summary, "parity").contains("skipped (no torch)"), "{summary}");
}

/// Fake GPU tools on PATH (nvidia-smi, compute-sanitizer) and fake benchmarks writing JSON lines
/// in the formats of `lrc bench conv` and scripts/torch_bench.py.
fn fake_gpu(root: &Path, bundle: &Path, python: &Path) -> PathBuf {
    let tools = root.join("tools");
    fs::create_dir_all(&tools).unwrap();
    write_executable(
        &tools.join("nvidia-smi"),
        "#!/usr/bin/env bash\necho 'name, driver_version, memory.total [MiB]'\n\
         echo 'Fake H100, 580.00, 81559 MiB'\n",
    );
    write_executable(
        &tools.join("compute-sanitizer"),
        "#!/usr/bin/env bash\nshift 4\n\"$@\" || exit $?\necho '========= ERROR SUMMARY: 0 errors'\n",
    );
    // One layer, one pass: lrc takes 2 ms (tf32-mma), 6 ms (fp32-tiled), 1.5 ms (bf16-mma),
    // 1.2 ms (tf32-wgmma) and 0.8 ms (bf16-wgmma), PyTorch 1 ms with TF32 and 0.5 ms with BF16
    // operands.
    let record = |engine: &str, algo: &str, ms: f64| {
        let precision = if algo == "cudnn-bf16" {
            r#""precision":"bf16","#
        } else {
            ""
        };
        format!(
            r#"{{"bench":"conv","engine":"{engine}","device":"Fake H100","layer":"enc1.conv1","kind":"conv","pass":"forward","algo":"{algo}",{precision}"n":16,"c_in":1,"h":256,"w":256,"c_out":32,"kh":3,"kw":3,"median_ms":{ms}}}"#
        )
    };
    // Writes the lines of the version named by --algo (all of them without one), as the check
    // runs `lrc bench conv` once per version.
    let json_writer = |lines: &[String]| {
        let mut text = String::from(
            "#!/usr/bin/env bash\nalgo=\nwhile (($#)); do [[ $1 == --json ]] && json=$2; \
             [[ $1 == --algo ]] && algo=$2; shift; done\n",
        );
        for line in lines {
            text += &format!("[[ -z $algo || '{line}' == *'\"algo\":\"'$algo'\"'* ]] && echo '{line}' >> \"$json\"\n");
        }
        text + "[[ -z $algo || $algo == tf32-mma ]] && echo 'total tf32-mma 2.0 ms'\nexit 0\n"
    };
    let lrc_bench = json_writer(&[
        record("lrc", "tf32-mma", 2.0),
        record("lrc", "bf16-mma", 1.5),
        record("lrc", "fp32-tiled", 6.0),
        record("lrc", "bf16-wgmma", 0.8),
        record("lrc", "tf32-wgmma", 1.2),
    ]);
    // `lrc bench superpixels`: one size, the GPU at 400 slices/s, the CPU at 20.
    let superpixels = r#"{"bench":"superpixels","device":"Fake H100","size":256,"batch":32,"windows":768,"cpu_slices_per_s":20.0,"gpu_slices_per_s":400.0,"gpu_end_to_end_slices_per_s":300.0,"mean_ari_vs_cpu":0.9991,"mean_regions_cpu":60.0,"mean_regions_gpu":61.0,"gpu_with_cleanup_slices_per_s":350.0,"gpu_cleanup_ms":11.43,"cpu_cleanup_median_ms":90.0,"cleanup_equal_to_cpu":true}"#;
    write_executable(
        &bundle.join("bin/lrc"),
        &format!(
            "#!/usr/bin/env bash\n[[ $1 == parity ]] && echo fake > \"$3\" && exit 0\n{FAKE_DEMO}{FAKE_PRETRAIN}[[ $1 == bench ]] || exit 9\n\
             if [[ $2 == superpixels ]]; then echo '{superpixels}' > \"$4\"; \
             echo 'superpixels 256x256: gpu 400.0 slices/s'; exit 0; fi\n{}",
            lrc_bench.trim_start_matches("#!/usr/bin/env bash\n")
        ),
    );
    let torch_bench = json_writer(&[record("torch", "cudnn-tf32", 1.0), record("torch", "cudnn-bf16", 0.5)]);
    // scripts/bench_felzenszwalb_skimage.py: scikit-image at 2 slices/s at 256 x 256.
    let skimage = json_writer(&[r#"{"bench":"superpixels-skimage","size":256,"slices_per_s":2.0}"#.to_string()]);
    write_executable(
        python,
        &format!(
            "#!/usr/bin/env bash\n[[ $1 == -c ]] && exit 0\n\
             [[ $2 == --check ]] && echo 'checked 3 tensors; worst relative error 1.000e-06 (tolerance 1e-04)' && exit 0\n\
             if [[ $1 == *bench_felzenszwalb_skimage.py ]]; then\n{}\nexit 0\nfi\n{FAKE_TORCH_PRETRAIN}{}",
            skimage.trim_start_matches("#!/usr/bin/env bash\n"),
            torch_bench.trim_start_matches("#!/usr/bin/env bash\n")
        ),
    );
    tools
}

/// Puts `line` first in the bundle's fake `lrc`, before what it does otherwise.
fn fake_lrc_first(bundle: &Path, line: &str) {
    let lrc = bundle.join("bin/lrc");
    let text = fs::read_to_string(&lrc).unwrap().replacen(
        "#!/usr/bin/env bash\n",
        &format!("#!/usr/bin/env bash\n{line}\n"),
        1,
    );
    write_executable(&lrc, &text);
}

/// A fake `lrc demo --quick ... -o DIR` for the fake `lrc`s: its tables, and the lines the check
/// quotes.
const FAKE_DEMO: &str = "if [[ $1 == demo ]]; then while (($#)); do [[ $1 == -o ]] && o=$2; shift; done; \
    mkdir -p \"$o/results\"; printf 'Table 4.1 - fake\\n\\n| model | AMI |\\n|---|---|\\n| LRC | 0.2 |\\n' \
    > \"$o/results/tables.md\"; echo '[demo]   loss 0.5 -> 0.25 in 1s'; \
    echo \"[demo] done in 2s; results in $o/results\"; exit 0; fi\n";

/// A fake `lrc synth`, `lrc prep` and `lrc pretrain METHOD ... --metrics F` for the fake `lrc`s:
/// 110 steps after a second of start-up, 20 ms each for global, 40 for local and 50 for joint;
/// and `lrc bench step --method METHOD --json F` on a device batch: 15, 30 and 35 ms.
const FAKE_PRETRAIN: &str = "[[ $1 == synth || $1 == prep ]] && exit 0\n\
    if [[ $1 == bench && $2 == step && $* == *--method* ]]; then \
    while (($#)); do [[ $1 == --method ]] && method=$2; [[ $1 == --json ]] && json=$2; shift; done; \
    case $method in global) ms=15;; local) ms=30;; *) ms=35;; esac; \
    echo \"{\\\"bench\\\":\\\"pretrain-step\\\",\\\"impl\\\":\\\"lrc\\\",\\\"method\\\":\\\"$method\\\",\\\"median_ms\\\":$ms}\" >> \"$json\"; \
    echo \"median $ms.00 ms\"; exit 0; fi\n\
    if [[ $1 == pretrain ]]; then case $2 in global) ms=20;; local) ms=40;; *) ms=50;; esac; \
    while (($#)); do [[ $1 == --metrics ]] && metrics=$2; shift; done; \
    awk -v ms=$ms 'BEGIN {for (s = 1; s <= 110; s++) printf \"{\\\"kind\\\":\\\"step\\\",\\\"step\\\":%d,\\\"elapsed_s\\\":%.3f}\\n\", s, 1 + s * ms / 1000}' \
    > \"$metrics\"; exit 0; fi\n";

/// A fake `torch_reference.py --bench pretrain --method METHOD --json F` for the fake pythons:
/// 25 ms a step for global, 50 for local and 60 for joint.
const FAKE_TORCH_PRETRAIN: &str = "if [[ $* == *'--bench pretrain'* ]]; then \
    while (($#)); do [[ $1 == --method ]] && method=$2; [[ $1 == --json ]] && json=$2; shift; done; \
    case $method in global) ms=25;; local) ms=50;; *) ms=60;; esac; \
    echo \"{\\\"bench\\\":\\\"pretrain\\\",\\\"impl\\\":\\\"torch-eager\\\",\\\"method\\\":\\\"$method\\\",\\\"median_ms\\\":$ms}\" >> \"$json\"; \
    exit 0; fi\n";

fn run_full(root: &Path, bundle: &Path, python: &Path, tools: &Path, budget: &str) -> (Output, String) {
    run_full_with(root, bundle, python, tools, &["--budget", budget])
}

/// As [`run_full`], with the script's options given.
fn run_full_with(root: &Path, bundle: &Path, python: &Path, tools: &Path, options: &[&str]) -> (Output, String) {
    let out_dir = root.join("out");
    let path = format!("{}:{}", tools.display(), std::env::var("PATH").unwrap_or_default());
    let output = Command::new("bash")
        .arg(script())
        .arg(&out_dir)
        .args(options)
        .current_dir(root)
        .env("PATH", path)
        .env("LRC_BUNDLE", bundle)
        .env("LRC_PYTHON", python)
        // A full check exports these for the test executables it runs, this one too: the run
        // under test must not inherit them.
        .env_remove("LRC_EMULATOR")
        .env_remove("LRC_SKIP_SAMPLE_CT")
        .output()
        .expect("run bash");
    let summary = fs::read_to_string(out_dir.join("summary.md")).expect("summary.md");
    (output, summary)
}

#[test]
fn the_check_benchmarks_every_convolution_version() {
    let text = fs::read_to_string(script()).unwrap();
    let line = text.lines().find(|l| l.starts_with("CONV_VERSIONS=")).unwrap();
    let listed: Vec<&str> = line["CONV_VERSIONS=".len()..].trim_matches('"').split(' ').collect();
    let all: Vec<&str> = ConvAlgo::ALL.iter().map(|a| a.name()).collect();
    assert_eq!(listed, all);
}

#[test]
fn a_full_run_compares_the_benchmarks() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, python) = fake_bundle(dir.path(), &[("fake_tests", fake_test(3, 0))]);
    let tools = fake_gpu(dir.path(), &bundle, &python);
    let (output, summary) = run_full(dir.path(), &bundle, &python, &tools, "420");
    assert!(output.status.success(), "{summary}");
    assert!(summary.contains("- card: Fake H100, 580.00, 81559 MiB"), "{summary}");
    let log = fs::read_to_string(dir.path().join("out/logs/test-fake_tests.log")).unwrap();
    assert!(log.contains("args: --include-ignored"), "{log}");
    // On the GPU machine the emulated tests are left to CI.
    assert!(log.contains("emulator: off"), "{log}");
    assert!(summary.contains("emulated kernel tests were skipped"), "{summary}");
    assert!(
        row(&summary, "memcheck").contains("ERROR SUMMARY: 0 errors"),
        "{summary}"
    );
    // Columns: layer, pass, shape, torch TF32 and BF16, then each lrc algorithm (in the order of
    // ConvAlgo::ALL) and its ratio to cuDNN at the same precision (BF16 for the bf16 versions).
    let cells: Vec<&str> = row(&summary, "enc1.conv1").split('|').map(str::trim).collect();
    assert_eq!(
        cells[1..17],
        [
            "enc1.conv1",
            "forward",
            "16x1x256x256>32 k3",
            "1.0000",
            "0.5000",
            "6.0000",
            "6.00",
            "2.0000",
            "2.00",
            "1.5000",
            "3.00",
            "1.2000",
            "1.20",
            "0.8000",
            "1.60",
            ""
        ]
    );
    assert!(
        summary.contains(
            "| torch tf32 | torch bf16 | lrc fp32-tiled | ratio | lrc tf32-mma | ratio | lrc bf16-mma | ratio | \
             lrc tf32-wgmma | ratio | lrc bf16-wgmma | ratio |"
        ),
        "{summary}"
    );
    let conv_table = &summary[summary.find("## Benchmark: conv").expect("a conv table")..];
    let total: Vec<&str> = row(conv_table, "**total**").split('|').map(str::trim).collect();
    assert_eq!(
        total[4..16],
        [
            "1.0000", "0.5000", "6.0000", "6.00", "2.0000", "2.00", "1.5000", "3.00", "1.2000", "1.20", "0.8000",
            "1.60"
        ]
    );
    // The fastest version per pass: tf32-wgmma (1.2 ms against cuDNN's 1.0: 83% of its
    // throughput) and bf16-wgmma (0.8 against 0.5).
    assert!(
        conv_table.contains(
            "- tf32, the fastest version per pass: 1.2000 ms in all, 1.20 x cuDNN; 0 of 1 passes at 90% of cuDNN \
             or better (fastest: tf32-mma 0, tf32-wgmma 1)"
        ),
        "{summary}"
    );
    assert!(
        conv_table.contains("- bf16, the fastest version per pass: 0.8000 ms in all, 1.60 x cuDNN; 0 of 1 passes"),
        "{summary}"
    );
    assert!(
        row(&summary, "bench superpixels").contains("superpixels 256x256: gpu 400.0 slices/s"),
        "{summary}"
    );
    // Size, cpu, gpu, end to end, gpu / cpu, scikit-image and gpu / scikit-image, ARI, regions
    // cpu and gpu; with the clean-up.
    assert!(
        summary.contains(
            "| 256 | 20.0 | 400.0 | 300.0 | 20.0 | 2.00 | 200 | 0.9991 | 60.0 | 61.0 | 350.0 | 11.43 | 90.0 | yes |"
        ),
        "{summary}"
    );
    assert!(
        row(&summary, "bench superpixels skimage").contains("| passed |"),
        "{summary}"
    );
    // The demo: passed, its losses quoted (without its temporary folder), its tables copied.
    let demo = row(&summary, "demo quick");
    assert!(
        demo.contains("| passed |") && demo.contains("loss 0.5 -> 0.25 in 1s;done in 2s |"),
        "{summary}"
    );
    assert!(
        summary.contains("## Demo: `lrc demo --quick` on this GPU\n\nTable 4.1 - fake\n\n| model | AMI |"),
        "{summary}"
    );
    assert!(dir.path().join("out/demo-tables.md").is_file());
}

#[test]
fn a_failing_demo_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, python) = fake_bundle(dir.path(), &[("fake_tests", fake_test(3, 0))]);
    let tools = fake_gpu(dir.path(), &bundle, &python);
    // The same fake lrc, but its demo stops with an error.
    fake_lrc_first(
        &bundle,
        "[[ $1 == demo ]] && echo 'error: fine-tuning failed' && exit 1",
    );
    let (output, summary) = run_full(dir.path(), &bundle, &python, &tools, "420");
    assert!(!output.status.success(), "{summary}");
    assert!(summary.contains("- result: FAILED"), "{summary}");
    let demo = row(&summary, "demo quick");
    assert!(
        demo.contains("FAILED (exit 1)") && demo.contains("error: fine-tuning failed"),
        "{summary}"
    );
    assert!(!summary.contains("## Demo:"), "{summary}");
}

#[test]
fn a_faulting_convolution_version_loses_its_own_figures_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, python) = fake_bundle(dir.path(), &[("fake_tests", fake_test(3, 0))]);
    let tools = fake_gpu(dir.path(), &bundle, &python);
    // The same fake lrc, but bf16-mma's benchmark dies as a faulting kernel would.
    fake_lrc_first(
        &bundle,
        "[[ \" $* \" == *' conv --algo bf16-mma '* ]] && echo 'error: illegal address' && exit 4",
    );
    let (output, summary) = run_full(dir.path(), &bundle, &python, &tools, "420");
    assert!(!output.status.success(), "{summary}");
    assert!(row(&summary, "bench lrc").contains("FAILED (exit 4)"), "{summary}");
    // The other versions' figures are all there (fp32-tiled, tf32-mma, the wgmma ones), and
    // bf16-mma's column is left out.
    let cells: Vec<&str> = row(&summary, "enc1.conv1").split('|').map(str::trim).collect();
    for figure in ["6.0000", "2.0000", "1.2000", "0.8000"] {
        assert!(cells.contains(&figure), "{figure}: {summary}");
    }
    assert!(!cells.contains(&"1.5000"), "{summary}");
}

#[test]
fn a_full_run_compares_the_lrc_loss_benchmarks() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, python) = fake_bundle(dir.path(), &[("fake_tests", fake_test(3, 0))]);
    let tools = fake_gpu(dir.path(), &bundle, &python);
    // Benchmarks that answer `bench lrc-loss` in the format of src/cli/bench/lrc_loss.rs and
    // scripts/torch_bench.py, one record per embedding type: FP32 lrc 0.5 ms (0.25 ms of kernels
    // with the samples uploaded beforehand) and 40 MiB, PyTorch 2 ms and 300 MiB; BF16 (half the
    // input bytes) lrc 0.4 ms (0.3 ms of kernels) and 41 MiB, PyTorch 1.2 ms and 200 MiB.
    let record = |engine: &str, (ms, peak): (f64, f64), (bf16_ms, bf16_peak): (f64, f64)| {
        let line = |dtype: &str, ms: f64, peak: f64, inputs: f64| {
            // lrc times its kernels alone too; PyTorch has no such field.
            let kernels = match (engine, dtype) {
                ("lrc", "f32") => r#","kernels_median_ms":0.25"#,
                ("lrc", _) => r#","kernels_median_ms":0.3"#,
                _ => "",
            };
            format!(
                r#"{{"bench":"lrc-loss","engine":"{engine}","device":"Fake H100","case":"d64-k256-raw","pass":"forward_backward","dtype":"{dtype}","median_ms":{ms}{kernels},"peak_mib":{peak},"inputs_mib":{inputs:.1}}}"#
            )
        };
        format!(
            "{}\n{}",
            line("f32", ms, peak, 512.0),
            line("bf16", bf16_ms, bf16_peak, 256.0)
        )
    };
    let answer = |line: String| {
        format!(
            "what=\"$*\"\nwhile (($#)); do [[ $1 == --json ]] && json=$2; shift; done\n\
             [[ $what == *lrc-loss* ]] && echo '{line}' >> \"$json\" && exit 0\necho 'total x 1.0 ms'\n"
        )
    };
    write_executable(
        &bundle.join("bin/lrc"),
        &format!(
            "#!/usr/bin/env bash\n[[ $1 == parity ]] && echo fake > \"$3\" && exit 0\n{FAKE_DEMO}{FAKE_PRETRAIN}[[ $1 == bench ]] || exit 9\n{}",
            answer(record("lrc", (0.5, 40.0), (0.4, 41.0)))
        ),
    );
    write_executable(
        &python,
        &format!(
            "#!/usr/bin/env bash\n[[ $1 == -c ]] && exit 0\n\
             [[ $2 == --check ]] && echo 'checked 3 tensors; worst relative error 1.000e-06 (tolerance 1e-04)' && exit 0\n{}",
            answer(record("torch", (2.0, 300.0), (1.2, 200.0)))
        ),
    );
    let (output, summary) = run_full(dir.path(), &bundle, &python, &tools, "420");
    assert!(output.status.success(), "{summary}");
    assert!(
        row(&summary, "memcheck lrc-loss").contains("ERROR SUMMARY: 0 errors"),
        "{summary}"
    );
    assert!(row(&summary, "bench lrc-loss lrc").contains("| passed |"), "{summary}");
    assert!(row(&summary, "bench lrc-loss torch").contains("2 timings"), "{summary}");
    // Columns: case, pass, dtype, torch ms, lrc ms, speed-up, lrc kernels ms, their speed-up,
    // torch peak, lrc peak, inputs; one row per embedding type, each lrc type against PyTorch at
    // that type.
    let rows: Vec<Vec<&str>> = summary
        .lines()
        .filter(|l| l.starts_with("| d64-k256-raw |"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{summary}");
    assert_eq!(
        rows[0][1..12],
        [
            "d64-k256-raw",
            "forward_backward",
            "f32",
            "2.0000",
            "0.5000",
            "4.00",
            "0.2500",
            "8.00",
            "300.0",
            "40.0",
            "512.0"
        ],
        "{summary}"
    );
    assert_eq!(
        rows[1][1..12],
        [
            "d64-k256-raw",
            "forward_backward",
            "bf16",
            "1.2000",
            "0.4000",
            "3.00",
            "0.3000",
            "4.00",
            "200.0",
            "41.0",
            "256.0"
        ],
        "{summary}"
    );
}

#[test]
fn steps_that_do_not_fit_the_budget_are_skipped_and_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, python) = fake_bundle(dir.path(), &[("fake_tests", fake_test(3, 0))]);
    let tools = fake_gpu(dir.path(), &bundle, &python);
    let (output, summary) = run_full(dir.path(), &bundle, &python, &tools, "0");
    assert!(output.status.success(), "{summary}");
    assert!(row(&summary, "fake_tests").contains("skipped (budget)"), "{summary}");
    for step in [
        "parity",
        "memcheck",
        "memcheck lrc-loss",
        "bench lrc",
        "bench torch",
        "bench lrc-loss lrc",
        "bench lrc-loss torch",
        "bench superpixels",
        "demo quick",
    ] {
        assert!(row(&summary, step).contains("skipped (budget)"), "{summary}");
    }
    let skipped = summary.split("## Skipped").nth(1).expect("a Skipped section");
    assert!(skipped.contains("bench torch: 0 s of the budget left"), "{summary}");
}

#[test]
fn a_full_run_times_pre_training_as_a_user_runs_it() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, python) = fake_bundle(dir.path(), &[("fake_tests", fake_test(3, 0))]);
    let tools = fake_gpu(dir.path(), &bundle, &python);
    let (output, summary) = run_full(dir.path(), &bundle, &python, &tools, "420");
    assert!(output.status.success(), "{summary}");
    // Steps 10 to 110 of each run: 20, 40 and 50 ms each, whatever the start-up took.
    assert!(
        row(&summary, "bench pretrain").contains("global 20.00 ms/step; local 40.00 ms/step; joint 50.00 ms/step"),
        "{summary}"
    );
    assert!(summary.contains("## Benchmark: pre-training"), "{summary}");
    // The same step on a device batch (30 ms) beside PyTorch's (50 ms): 0.60 of its time.
    assert!(
        summary.contains("| local | 110 | 40.00 | 400 | 1.04 |  |  | 30.00 | 50.00 | 0.60 |"),
        "{summary}"
    );
    assert!(row(&summary, "bench pretrain step").contains("| passed |"), "{summary}");
    assert!(
        row(&summary, "bench pretrain torch").contains("| passed |"),
        "{summary}"
    );
    // A run that fails fails the check.
    fake_lrc_first(
        &bundle,
        "[[ $1 == pretrain && $2 == joint ]] && echo 'error: out of memory' && exit 3",
    );
    let (output, summary) = run_full(dir.path(), &bundle, &python, &tools, "420");
    assert!(!output.status.success(), "{summary}");
    let pretrain = row(&summary, "bench pretrain");
    assert!(
        pretrain.contains("FAILED (exit 3)") && pretrain.contains("out of memory"),
        "{summary}"
    );
}

#[test]
fn only_the_steps_asked_for_run() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, python) = fake_bundle(dir.path(), &[("fake_tests", fake_test(3, 0))]);
    let tools = fake_gpu(dir.path(), &bundle, &python);
    let only = "tests,bench step lrc,demo quick";
    let (output, summary) = run_full_with(
        dir.path(),
        &bundle,
        &python,
        &tools,
        &["--budget", "420", "--only", only],
    );
    assert!(output.status.success(), "{summary}");
    assert!(row(&summary, "fake_tests").contains("| ok |"), "{summary}");
    assert!(row(&summary, "bench step lrc").contains("passed"), "{summary}");
    assert!(row(&summary, "demo quick").contains("passed"), "{summary}");
    // Every other step neither runs nor shows, and the summary says why.
    for step in [
        "parity",
        "bench lrc",
        "bench torch",
        "memcheck",
        "bench step torch",
        "bench step lrc bf16",
        "bench norm lrc",
    ] {
        assert!(!summary.contains(&format!("| {step} |")), "{step} ran: {summary}");
    }
    assert!(
        summary.contains(&format!("--only: the steps asked for were {only}; no other ran")),
        "{summary}"
    );
    // Without "tests" no test executable runs.
    let (output, summary) = run_full_with(dir.path(), &bundle, &python, &tools, &["--only", "demo quick"]);
    assert!(output.status.success(), "{summary}");
    assert!(!summary.contains("| fake_tests |"), "{summary}");
    assert!(row(&summary, "demo quick").contains("passed"), "{summary}");
}

#[test]
fn the_paths_compiled_into_the_tests_are_linked_to_this_tree_for_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("fixture.txt"), "x").unwrap();
    // Where the bundle was built: absent here, as on a GPU machine whose tree sits elsewhere.
    let built_root = root.join("elsewhere/built-root");
    let bin_exe = built_root.join("target/release/lrc");
    let report = built_root.join("target/release/build/lrc-0/out/report.tsv");
    // Like a test reading env!("CARGO_MANIFEST_DIR"), running env!("CARGO_BIN_EXE_lrc") and
    // reading a build output named by a build script's rustc-env variable.
    let reads_paths = format!(
        "#!/usr/bin/env bash\nif [[ -f '{}/fixture.txt' && $(cat '{}') == report ]] && '{}' parity --out \"$(mktemp)\"; \
         then\n{}\nelse\n{}\nfi\n",
        built_root.display(),
        report.display(),
        bin_exe.display(),
        "echo 'test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s'",
        "echo 'test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s'; exit 101"
    );
    let (bundle, python) = fake_bundle(root, &[("reads_paths", reads_paths)]);
    fs::write(
        bundle.join("BUILD"),
        format!(
            "manifest_dir={}\nbin_exe_lrc={}\nfile={}\n",
            built_root.display(),
            bin_exe.display(),
            report.display()
        ),
    )
    .unwrap();
    let kept = bundle.join(format!("files{}", report.display()));
    fs::create_dir_all(kept.parent().unwrap()).unwrap();
    fs::write(kept, "report").unwrap();
    let (output, summary) = run_dry(root, &bundle, &python);
    assert!(output.status.success(), "{summary}");
    assert!(row(&summary, "reads_paths").ends_with("| ok |"), "{summary}");
    assert!(summary.contains("linked the build-time root"), "{summary}");
    // Nothing made for the run is left behind.
    assert!(!root.join("elsewhere").exists(), "{summary}");
    assert!(!root.join("target").exists(), "{summary}");
}

/// Nsight Compute's details page for three launches of two kernels, as `ncu --csv --print-units
/// base` writes it, with ncu's own messages between the rows.
const NCU_CSV: &str = r#"==PROF== Connected to process 4242 (/bundle/bin/lrc)
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","4242","lrc","gpu","conv_fwd_tf32_k3_n64","1","7","(256, 1, 1)","(512, 1, 1)","0","9.0","GPU Speed Of Light Throughput","Duration","ns","2,000"
"0","4242","lrc","gpu","conv_fwd_tf32_k3_n64","1","7","(256, 1, 1)","(512, 1, 1)","0","9.0","GPU Speed Of Light Throughput","Compute (SM) Throughput","%","50"
"0","4242","lrc","gpu","conv_fwd_tf32_k3_n64","1","7","(256, 1, 1)","(512, 1, 1)","0","9.0","GPU Speed Of Light Throughput","Memory Throughput","%","20"
"0","4242","lrc","gpu","conv_fwd_tf32_k3_n64","1","7","(256, 1, 1)","(512, 1, 1)","0","9.0","Launch Statistics","Registers Per Thread","register/thread","128"
"1","4242","lrc","gpu","norm_forward","1","7","(256, 1, 1)","(64, 1, 1)","0","9.0","GPU Speed Of Light Throughput","Duration","us","1"
"1","4242","lrc","gpu","norm_forward","1","7","(256, 1, 1)","(64, 1, 1)","0","9.0","GPU Speed Of Light Throughput","DRAM Throughput","%","80.5"
==PROF== Profiling "conv_fwd_tf32_k3_n64": 0%....50%....100% - 9 passes
"2","4242","lrc","gpu","conv_fwd_tf32_k3_n64","1","7","(256, 1, 1)","(512, 1, 1)","0","9.0","GPU Speed Of Light Throughput","Duration","ns","4,000"
"2","4242","lrc","gpu","conv_fwd_tf32_k3_n64","1","7","(256, 1, 1)","(512, 1, 1)","0","9.0","GPU Speed Of Light Throughput","Compute (SM) Throughput","%","70"
"2","4242","lrc","gpu","conv_fwd_tf32_k3_n64","1","7","(256, 1, 1)","(512, 1, 1)","0","9.0","Occupancy","Achieved Occupancy","%","31.25"
==PROF== Disconnected from process 4242
"#;

#[test]
fn a_full_run_tables_the_ncu_profile_of_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, python) = fake_bundle(dir.path(), &[("fake_tests", fake_test(3, 0))]);
    let tools = fake_gpu(dir.path(), &bundle, &python);
    fs::create_dir_all(bundle.join("scripts")).unwrap();
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ncu_table.py"),
        bundle.join("scripts/ncu_table.py"),
    )
    .unwrap();
    fs::write(dir.path().join("ncu.csv"), NCU_CSV).unwrap();
    // A fake ncu that profiles the step: it must be given the training step to run, with the
    // default convolution version (LRC_CONV_ALGO unset, whatever the check's environment).
    write_executable(
        &tools.join("ncu"),
        &format!(
            "#!/usr/bin/env bash\nargs=\"$*\"\n[[ $args == *'bench step --batch 16 --size 256'* ]] || exit 7\n\
             [[ -z ${{LRC_CONV_ALGO+set}} ]] || exit 8\n\
             while (($#)); do [[ $1 == --log-file ]] && cp '{}' \"$2\"; shift; done\n",
            dir.path().join("ncu.csv").display()
        ),
    );
    let (output, summary) = run_full(dir.path(), &bundle, &python, &tools, "420");
    assert!(output.status.success(), "{summary}");
    assert!(row(&summary, "ncu step").contains("3 launches profiled"), "{summary}");
    // conv: 6 us of 7 in two launches, SM 60% on average, 20% memory from one launch, 128
    // registers, occupancy from one launch; norm: 1 us (given in us), DRAM 80.5%.
    assert!(
        summary.contains("| conv_fwd_tf32_k3_n64 | 2 | 0.006 | 3.0 | 85.7 | 60.0 | 20.0 |  | 128 | 31.2 |"),
        "{summary}"
    );
    assert!(
        summary.contains("| norm_forward | 1 | 0.001 | 1.0 | 14.3 |  |  | 80.5 |  |  |"),
        "{summary}"
    );
    assert!(
        summary.contains("3 launches of 2 kernels, 0.007 ms in all"),
        "{summary}"
    );
}

#[test]
fn a_failed_ncu_profile_is_reported_without_failing_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, python) = fake_bundle(dir.path(), &[("fake_tests", fake_test(3, 0))]);
    let tools = fake_gpu(dir.path(), &bundle, &python);
    write_executable(
        &tools.join("ncu"),
        "#!/usr/bin/env bash\necho '==ERROR== ERR_NVGPUCTRPERM - no permission to access counters'\nexit 1\n",
    );
    let (output, summary) = run_full(dir.path(), &bundle, &python, &tools, "420");
    assert!(output.status.success(), "{summary}");
    let ncu = row(&summary, "ncu step");
    assert!(
        ncu.contains("no profile (exit 1") && ncu.contains("ERR_NVGPUCTRPERM"),
        "{summary}"
    );
    assert!(!summary.contains("## Nsight Compute"), "{summary}");
}
