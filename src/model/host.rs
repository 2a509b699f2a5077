//! Reading tensors back to the host, counted.
//!
//! On a GPU a read waits for every queued launch to finish, so a loop that reads in the middle of
//! a step stalls the device. Every read of the training, update and decoding loops goes through
//! these functions, which count them (per thread, and over the process), so tests can assert how
//! many reads a step makes and `bench --count-kernels` can report them.

use super::ModelError;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static TOTAL: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static HERE: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    TOTAL.fetch_add(1, Ordering::Relaxed);
    HERE.with(|c| c.set(c.get() + 1));
}

/// Host reads made so far by this thread.
pub fn reads_on_this_thread() -> u64 {
    HERE.with(Cell::get)
}

/// Host reads made so far by the whole process.
pub fn reads_total() -> u64 {
    TOTAL.load(Ordering::Relaxed)
}

/// A tensor's values on the host as f32, whatever the backend's float type (one read).
pub fn host_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>, ModelError> {
    count();
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| ModelError::TensorRead(format!("{e:?}")))
}

/// An integer tensor's values on the host as i64, whatever the backend's int type (one read).
pub fn host_i64<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Result<Vec<i64>, ModelError> {
    count();
    t.into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .map_err(|e| ModelError::TensorRead(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Cpu;
    use burn::tensor::TensorData;

    #[test]
    fn reads_are_counted_per_thread_and_in_total() {
        let dev = Default::default();
        let (here, total) = (reads_on_this_thread(), reads_total());
        let t = Tensor::<Cpu, 1>::from_data(TensorData::new(vec![1.0f32, 2.0], [2]), &dev);
        assert_eq!(host_f32(t.clone()).unwrap(), vec![1.0, 2.0]);
        assert_eq!(host_i64(t.int()).unwrap(), vec![1, 2]);
        assert_eq!(reads_on_this_thread() - here, 2);
        assert!(reads_total() - total >= 2);
        std::thread::spawn(|| assert_eq!(reads_on_this_thread(), 0))
            .join()
            .unwrap();
    }
}
