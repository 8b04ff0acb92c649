//! The three C math functions the binary calls (`log`, `log10`, `pow`: from
//! dependencies — prometheus-client's histogram buckets, plotters' axes and
//! number labels in the clock report), defined here from the `libm` crate so that the linker
//! (`--as-needed`) leaves the system's libm out. Loading glibc's libm costs
//! about 0.5 MiB of resident memory whatever is called (its IFUNC resolvers
//! run at load and the kernel maps its code in 64 KiB runs around each page
//! touched): on a gateway whose whole footprint is about 10 MiB that is 5 %.
//! The engine does not use them (its results do not depend on them); both
//! implementations are within 1 ulp.
//!
//! Only where glibc is the C library (a musl or Windows build has no
//! separate libm to leave out).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod defs {
    #[no_mangle]
    pub extern "C" fn log(x: f64) -> f64 {
        libm::log(x)
    }

    #[no_mangle]
    pub extern "C" fn log10(x: f64) -> f64 {
        libm::log10(x)
    }

    #[no_mangle]
    pub extern "C" fn pow(x: f64, y: f64) -> f64 {
        libm::pow(x, y)
    }
}

#[cfg(test)]
mod tests {
    use std::f64::consts::{E, LN_10, LN_2, LOG10_2, LOG10_E, SQRT_2};

    /// Equal, or one ulp apart.
    fn close(a: f64, b: f64) -> bool {
        a == b || (a.to_bits() as i64 - b.to_bits() as i64).abs() <= 1
    }

    // In this test binary `f64::ln`, `log10` and `powf` call these very functions: the references
    // are std's correctly rounded constants and exact cases, not the platform's results.
    #[test]
    fn the_functions_match_correctly_rounded_references() {
        assert!(close(libm::log(2.0), LN_2));
        assert!(close(libm::log(10.0), LN_10));
        assert!(close(libm::log(E), 1.0));
        assert!(close(libm::log10(2.0), LOG10_2));
        assert!(close(libm::log10(E), LOG10_E));
        assert!(close(libm::pow(2.0, 0.5), SQRT_2));
        // exact cases stay exact (histogram buckets and plot ticks are powers of ten and two)
        for k in 0..=22 {
            let p: f64 = format!("1e{k}").parse().unwrap();
            assert_eq!(libm::pow(10.0, f64::from(k)), p, "10^{k}");
            assert_eq!(libm::log10(p), f64::from(k), "log10(1e{k})");
        }
        for k in -30..=30 {
            assert_eq!(libm::pow(2.0, f64::from(k)), 2f64.powi(k), "2^{k}");
        }
    }
}
