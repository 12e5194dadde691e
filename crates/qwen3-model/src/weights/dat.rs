//! The `.dat` format against the schema: reading (`DatSource`, NVFP4 pairs
//! as stored, raw tensors converted to the compute kind).

use dat_format::DatFile;
use nvfp4_kernels::Nvfp4Tensor;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::weights::schema::TensorSpec;
use crate::weights::source::{shape_problem, Check, WeightSource};

/// A `.dat` file as a weight source.
pub(crate) struct DatSource<'a> {
    pub(crate) dat: &'a DatFile,
}

impl WeightSource for DatSource<'_> {
    fn describe(&self) -> String {
        self.dat.path().display().to_string()
    }

    fn keys(&self) -> Vec<String> {
        self.dat.entries().iter().map(|e| e.key.clone()).collect()
    }

    fn check(&self, spec: &TensorSpec) -> Check {
        if spec.is_packed() {
            return match self.dat.nvfp4(spec.base()) {
                Ok(None) => Check::Missing,
                Err(e) => Check::Problem(e.to_string()),
                Ok(Some(q)) if [q.rows, q.cols] != spec.shape[..] => {
                    Check::Problem(shape_problem(spec.base(), &[q.rows, q.cols], spec))
                }
                Ok(Some(_)) => Check::Present,
            };
        }
        match self.dat.get(&spec.key) {
            None => Check::Missing,
            Some(e) if !e.elem.is_float() => Check::Problem(format!(
                "{} has element type {:?}, expected a float type",
                spec.key, e.elem
            )),
            Some(e) if e.shape != spec.shape => {
                Check::Problem(shape_problem(&spec.key, &e.shape, spec))
            }
            Some(_) => Check::Present,
        }
    }

    fn dense(&mut self, spec: &TensorSpec, kind: Kind, device: Device) -> Result<Tensor> {
        Ok(self.dat.tensor_as(&spec.key, kind, device)?)
    }

    fn packed(&mut self, spec: &TensorSpec, device: Device) -> Result<Nvfp4Tensor> {
        let q = self
            .dat
            .nvfp4(spec.base())?
            .ok_or_else(|| Error::InvalidArgument {
                name: "weights",
                reason: format!("{} vanished from {}", spec.base(), self.describe()),
            })?;
        Ok(Nvfp4Tensor::from_host(&q, device)?)
    }
}
