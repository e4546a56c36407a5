//! The crate-wide error type. Anything a user can cause is an `Error`, never a panic.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operands whose shapes do not fit the op.
    #[error("shape error in {op}: {detail}")]
    Shape { op: &'static str, detail: String },

    /// Operands of different element types, or a type the op does not support.
    #[error("dtype error in {op}: {detail}")]
    DType { op: &'static str, detail: String },

    /// Operands on different devices, or an op the device cannot run.
    #[error("device error: {0}")]
    Device(String),

    /// The CUDA backend was asked for work but the binary holds no kernels.
    #[error("built without CUDA kernels: run scripts/install-cuda-compiler.sh and rebuild")]
    NoKernels,

    /// A CUDA driver or launch failure.
    #[error("CUDA error: {0}")]
    Cuda(String),

    /// Reading or writing a file failed at the OS level.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file was read but its content is wrong (bad header, corrupt data, mismatched geometry).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },

    /// A checkpoint that does not fit the model or run that loads it.
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },

    /// A bad option or parameter value.
    #[error("invalid configuration: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }

    pub fn dtype(op: &'static str, detail: impl Into<String>) -> Self {
        Error::DType {
            op,
            detail: detail.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }
}
