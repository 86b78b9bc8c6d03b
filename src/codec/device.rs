//! Where the neural stages run, decided once at start: the CPU always; a CUDA GPU too when
//! this is a `cuda` build (candle's CUDA links libcuda at start-up, so it cannot be a switch
//! of the default binary) and the machine has one. Settings (`use_gpu`) choose per track.

use candle_core::Device;

pub struct Devices {
    gpu: Option<Device>,
}

impl Devices {
    /// Looks for a GPU and says what it found.
    pub fn detect() -> Devices {
        if !Devices::cuda_build() {
            tracing::info!("neural stages run on the CPU (built without CUDA)");
            return Devices { gpu: None };
        }
        match Device::new_cuda(0) {
            Ok(gpu) => {
                tracing::info!("neural stages run on CUDA device 0 where settings ask for the GPU, else on the CPU");
                Devices { gpu: Some(gpu) }
            }
            Err(e) => {
                tracing::warn!(error = %e, "CUDA build without a usable GPU: neural stages run on the CPU");
                Devices { gpu: None }
            }
        }
    }

    pub fn cuda_build() -> bool {
        cfg!(feature = "cuda")
    }

    pub fn gpu_available(&self) -> bool {
        self.gpu.is_some()
    }

    /// The GPU if asked for and present, else the CPU.
    pub fn pick(&self, use_gpu: bool) -> Device {
        match (&self.gpu, use_gpu) {
            (Some(gpu), true) => gpu.clone(),
            _ => Device::Cpu,
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Tensor;

    use super::*;

    #[test]
    fn without_a_gpu_everything_runs_on_the_cpu() {
        let devices = Devices::detect();
        if Devices::cuda_build() {
            return; // This test is about the default build; a cuda build may find a GPU.
        }
        assert!(!devices.gpu_available());
        let d = devices.pick(true);
        assert!(d.is_cpu());
        let a = Tensor::new(&[[1f32, 2.], [3., 4.]], &d).unwrap();
        let b = a.matmul(&a).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(b, vec![vec![7., 10.], vec![15., 22.]]);
    }
}
