//! edgejoin's end-to-end suite lives in `tests/tests/`; this library is empty.
