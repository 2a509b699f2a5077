//! Learning-rate schedule: linear warmup, then cosine decay to a floor.

/// Learning rate at `step` (0-based) of `total` steps.
pub fn cosine_with_warmup(
    step: usize,
    total: usize,
    base: f64,
    min: f64,
    warmup_ratio: f64,
) -> f64 {
    let warmup = ((total as f64) * warmup_ratio).round() as usize;
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    min + 0.5 * (base - min) * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_peak_and_floor() {
        let lr = |s| cosine_with_warmup(s, 100, 1e-3, 1e-5, 0.1);
        assert!((lr(0) - 1e-4).abs() < 1e-12);
        assert!((lr(9) - 1e-3).abs() < 1e-12);
        assert!((lr(10) - 1e-3).abs() < 1e-12);
        assert!(lr(50) < lr(20));
        assert!((lr(100) - 1e-5).abs() < 1e-9);
    }
}
