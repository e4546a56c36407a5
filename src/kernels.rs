//! The compiled CUDA kernels embedded in this build (see build.rs and docs/CUDA.md).
//!
//! Generated constants: [`BUILT`], [`NVCC`], [`NVCC_VERSION`], [`CPU_ONLY_REASON`], [`MODULES`]
//! (one fatbin per `kernels/*.cu`, by file stem) and [`PTXAS_REPORT`] (registers, shared memory,
//! stack and spills per kernel and architecture, tab-separated with a header line).

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The fatbin compiled from `kernels/<name>.cu`, if this build holds it.
pub fn module_image(name: &str) -> Option<&'static [u8]> {
    MODULES.iter().find(|(n, _)| *n == name).map(|(_, image)| *image)
}

/// One line of [`PTXAS_REPORT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelResources {
    pub module: String,
    pub arch: String,
    pub kernel: String,
    pub registers: u32,
    pub shared_bytes: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
}

/// Parses [`PTXAS_REPORT`] (or a report in the same format).
pub fn parse_ptxas_report(report: &str) -> Result<Vec<KernelResources>, String> {
    report
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 8 {
                return Err(format!("bad ptxas report line (expected 8 fields): {line:?}"));
            }
            let num = |i: usize| {
                f[i].parse::<u32>()
                    .map_err(|_| format!("bad number {:?} in ptxas report line {line:?}", f[i]))
            };
            Ok(KernelResources {
                module: f[0].to_string(),
                arch: f[1].to_string(),
                kernel: f[2].to_string(),
                registers: num(3)?,
                shared_bytes: num(4)?,
                stack_bytes: num(5)?,
                spill_store_bytes: num(6)?,
                spill_load_bytes: num(7)?,
            })
        })
        .collect()
}
