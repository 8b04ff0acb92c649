//! What `std`'s prelude would give, from `alloc` (the engine also builds
//! without std).

pub use alloc::boxed::Box;
pub use alloc::format;
pub use alloc::string::{String, ToString};
pub use alloc::vec;
pub use alloc::vec::Vec;
