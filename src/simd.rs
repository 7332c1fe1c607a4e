//! Code compiled for the vector units the CPU has, with the same bits on every CPU.
//!
//! [`vectorised!`] defines a function whose body is compiled three times (AVX-512F, AVX2 and
//! the x86-64 baseline) and picks the widest the running CPU supports. Rust never fuses a
//! multiply and an add into one rounding, so the three give identical results: only how many
//! lanes a loop handles per instruction changes, not the order of any sum.

/// Defines `fn name(args) -> ret` that runs `body` compiled for AVX-512F or AVX2 when the CPU
/// has them (so its loops use 512- or 256-bit vectors), else compiled for the baseline. All
/// give the same bits: no fused multiply-add is ever formed.
macro_rules! vectorised {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}
