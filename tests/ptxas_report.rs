//! The ptxas resource report of the embedded kernels: it exists whenever kernels were built, and
//! no kernel spills registers to local memory unless it is on the allow-list below.

use lrc::kernels::{self, KernelResources};

/// Kernels allowed to spill, each with the reason. Empty: every kernel fits its registers.
const ALLOWED_SPILLS: &[(&str, &str)] = &[];

/// The static shared memory a block may use without opting in to more.
const STATIC_SHARED_LIMIT: u32 = 48 * 1024;

fn report() -> Vec<KernelResources> {
    kernels::parse_ptxas_report(kernels::PTXAS_REPORT).expect("the embedded report parses")
}

#[test]
fn the_report_file_is_the_embedded_report() {
    let path = env!("LRC_PTXAS_REPORT");
    let on_disk = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    assert_eq!(on_disk, kernels::PTXAS_REPORT);
    assert!(on_disk.starts_with("module\tarch\tkernel\t"), "missing header");
}

#[test]
fn a_build_with_kernels_has_a_report_for_every_module() {
    let rows = report();
    if !kernels::BUILT {
        assert!(rows.is_empty(), "a CPU-only build has no kernels to report");
        return;
    }
    assert!(!rows.is_empty(), "kernels were built but ptxas reported nothing");
    for (module, _) in kernels::MODULES {
        assert!(
            rows.iter().any(|r| r.module == *module),
            "no ptxas report for module {module}"
        );
    }
}

#[test]
fn no_kernel_spills_or_exceeds_its_resources() {
    let rows = report();
    println!(
        "{:<34} {:<6} {:>5} {:>7} {:>6} {:>7} {:>7}",
        "kernel", "arch", "regs", "smem", "stack", "spill-st", "spill-ld"
    );
    for r in &rows {
        println!(
            "{:<34} {:<6} {:>5} {:>7} {:>6} {:>7} {:>7}",
            r.kernel, r.arch, r.registers, r.shared_bytes, r.stack_bytes, r.spill_store_bytes, r.spill_load_bytes
        );
    }
    let mut problems = Vec::new();
    for r in &rows {
        let spills = r.spill_store_bytes + r.spill_load_bytes > 0;
        if spills && !ALLOWED_SPILLS.iter().any(|(k, _)| *k == r.kernel) {
            problems.push(format!(
                "{} ({}) spills {} bytes stored / {} loaded",
                r.kernel, r.arch, r.spill_store_bytes, r.spill_load_bytes
            ));
        }
        if r.registers == 0 || r.registers > 255 {
            problems.push(format!("{} ({}) reports {} registers", r.kernel, r.arch, r.registers));
        }
        if r.shared_bytes > STATIC_SHARED_LIMIT {
            problems.push(format!(
                "{} ({}) uses {} bytes of static shared memory",
                r.kernel, r.arch, r.shared_bytes
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_allow_list_names_only_existing_kernels() {
    let rows = report();
    if rows.is_empty() {
        return;
    }
    for (kernel, _) in ALLOWED_SPILLS {
        assert!(
            rows.iter().any(|r| r.kernel == *kernel),
            "allow-listed kernel {kernel} does not exist"
        );
    }
}
