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
    #[test]
    fn the_functions_agree_with_the_platform_within_an_ulp() {
        let close = |a: f64, b: f64| a == b || (a.to_bits() as i64 - b.to_bits() as i64).abs() <= 1;
        for &x in &[1e-300, 1e-9, 0.001, 0.5, 1.0, 2.0, 10.0, 1234.5, 1e300] {
            assert!(close(libm::log(x), x.ln()), "{x}");
            assert!(close(libm::log10(x), x.log10()), "{x}");
            for &y in &[-3.0, -0.5, 0.0, 0.5, 2.0, 7.0] {
                assert!(close(libm::pow(x, y), x.powf(y)), "{x}^{y}");
            }
        }
        // exact cases stay exact (histogram buckets are powers)
        assert_eq!(libm::pow(2.0, 10.0), 1024.0);
        assert_eq!(libm::log10(1000.0), 3.0);
    }
}
