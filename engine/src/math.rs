//! The two `f64` functions the engine needs that `core` lacks: from std when
//! it is there, from `libm` (same IEEE results: both are exact or correctly
//! rounded) on a microcontroller.

#[cfg(feature = "std")]
#[inline]
pub fn floor(x: f64) -> f64 {
    x.floor()
}

#[cfg(not(feature = "std"))]
#[inline]
pub fn floor(x: f64) -> f64 {
    libm::floor(x)
}

#[cfg(feature = "std")]
#[inline]
pub fn sqrt(x: f64) -> f64 {
    x.sqrt()
}

#[cfg(not(feature = "std"))]
#[inline]
pub fn sqrt(x: f64) -> f64 {
    libm::sqrt(x)
}
