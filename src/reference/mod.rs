//! The plain reference path of SPEC §1: scalar, single-threaded, obviously correct, accumulating in
//! f64. It is the oracle every fast path (each SIMD level, rayon, CUDA) is tested against.
