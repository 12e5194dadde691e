//! Export of a (trained) model: NVFP4 `.dat` and Hugging Face directory.

mod dat;
mod hf;
mod weights;

pub use dat::export_dat;
pub use hf::{export_hf_dir, export_hf_dir_with, HfDtype, HfExportOptions};
