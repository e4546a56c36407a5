//! `lrc bench batch` end to end on a tiny store: every stage is timed on each thread count
//! asked for, one JSON line each, and the summary line names the slowest stage.

use std::process::Command;

#[test]
fn bench_batch_times_every_stage_on_each_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("batch.jsonl");
    let output = Command::new(env!("CARGO_BIN_EXE_lrc"))
        .args([
            "bench", "batch", "--batch", "2", "--crop", "48", "--cases", "1", "--slices", "8",
        ])
        .args(["--repeats", "2", "--threads", "1,2", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(String, u64)> = records
        .iter()
        .map(|r| (r["stage"].as_str().unwrap().to_string(), r["threads"].as_u64().unwrap()))
        .collect();
    let mut expected = Vec::new();
    for stage in ["moco", "lrc", "joint", "finetune"] {
        for threads in [1, 2] {
            expected.push((stage.to_string(), threads));
        }
    }
    assert_eq!(seen, expected);
    assert!(records.iter().all(|r| r["median_ms"].as_f64().unwrap() >= 0.0));
    assert!(stdout.contains("batch: slowest stage on 2 threads:"), "{stdout}");
}

#[test]
fn bench_batch_refuses_too_few_slices() {
    let output = Command::new(env!("CARGO_BIN_EXE_lrc"))
        .args(["bench", "batch", "--slices", "4"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--slices must be 8 to 1024"), "{stderr}");
}
