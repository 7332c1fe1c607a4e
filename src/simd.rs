//! Code compiled for the vector units the CPU has, with the same bits on every CPU.
//!
//! [`vectorised!`] defines a function whose body is compiled three times (AVX-512F, AVX2 and
//! the x86-64 baseline) and picks the widest the running CPU supports. Rust never fuses a
//! multiply and an add into one rounding, so the three give identical results: only how many
//! lanes a loop handles per instruction changes, not the order of any sum.
//!
//! [`exp_in_place`] is the exponential of a slice with the bits of glibc's `expf`, on the
//! vector units: the element-wise and row-wise ops that take exponentials (softmax,
//! log-sum-exp and its gradient, `gelu_new`) spent much of their time in the scalar libm call.
//! [`erf_in_place`] is the error function with the bits of libm's `erff`, for the exact GELU.

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

/// Values per block of [`fast_then_slow`] (a block's inputs are kept on the stack for the
/// values outside the fast path).
const EXP_BLOCK: usize = 256;

/// `32 / ln 2`, rounded to f64: the scale that turns `x` into steps of 1/32 octave.
const EXP_INV_LN2_N: f64 = f64::from_bits(0x4047_1547_652b_82fe);
/// `1.5 · 2^52`: adding it rounds a value below 2^51 to an integer, kept in the low bits.
const EXP_SHIFT: f64 = f64::from_bits(0x4338_0000_0000_0000);
/// The cubic's coefficients of `2^(r/32)` on `|r| ≤ 1/2`: `C0 r³ + C1 r² + C2 r + 1`.
const EXP_POLY: [f64; 3] = [
    f64::from_bits(0x3ebc_6af8_4b91_2394),
    f64::from_bits(0x3f2e_bfce_50fa_c4f3),
    f64::from_bits(0x3f96_2e42_ff0c_52d6),
];
/// Bits of `2^(i/32)`, minus `i · 2^47` (what the scaled integer part adds back), `i < 32`.
const EXP2_TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

/// `e^x` of every value of `xs`, in place, with the bits of glibc's `expf` (the algorithm of
/// glibc 2.27 and later, as its FMA build computes it: a multiple of 1/32 octave from one
/// fused multiply-add in f64, a table of `2^(i/32)` and a cubic, rounded once to f32), so
/// every value is what `f32::exp` gives on the x86-64 Linux machines the committed tables were
/// computed on, and the same on every CPU. The fast path runs on the vector units (AVX-512F or
/// AVX2 with FMA; elsewhere the same fused operations through `f64::mul_add`, correctly
/// rounded, so the same bits); the few values outside it (|x| ≥ 88, infinities, NaN) go through
/// `f32::exp`. Test `exp_in_place_is_glibc_expf_bit_for_bit`.
pub fn exp_in_place(xs: &mut [f32]) {
    // Outside: the exponent field of |x| at 88 and above (and infinities and NaN).
    fast_then_slow(
        xs,
        exp_fast,
        |x| (x.to_bits() >> 20) & 0x7ff >= 0x42b,
        f32::exp,
    );
}

/// `fast` over `xs` in place, block by block, then `slow` of the input for each value
/// `outside` its fast path (each block's inputs are kept on the stack for those): how
/// [`exp_in_place`] and [`erf_in_place`] treat the few values their vector code does not.
#[inline(always)]
fn fast_then_slow(
    xs: &mut [f32],
    fast: fn(&mut [f32]),
    outside: impl Fn(f32) -> bool,
    slow: fn(f32) -> f32,
) {
    let mut kept = [0f32; EXP_BLOCK];
    for block in xs.chunks_mut(EXP_BLOCK) {
        let kept = &mut kept[..block.len()];
        kept.copy_from_slice(block);
        fast(block);
        for (y, &x) in block.iter_mut().zip(kept.iter()) {
            if outside(x) {
                *y = slow(x);
            }
        }
    }
}

/// The fast path of [`exp_in_place`] for every value (outside it the result is meaningless),
/// compiled for the widest vector unit with FMA the CPU has.
fn exp_fast(xs: &mut [f32]) {
    #[inline(always)]
    fn generic(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x = exp_fast_one(*x);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,fma")]
        fn avx512(xs: &mut [f32]) {
            generic(xs)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(xs: &mut [f32]) {
            generic(xs)
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX-512F and FMA (checked just above).
            return unsafe { avx512(xs) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { avx2(xs) };
        }
    }
    generic(xs)
}

/// `e^x` for `|x| < 88` (see [`exp_in_place`]): `x · 32/ln 2 = k + r` with `k` an integer and
/// `|r| ≤ 1/2`, then `2^(k/32) · 2^(r/32)`, the first from the table and the exponent bits,
/// the second from the cubic; every `mul_add` is one rounding, as glibc's FMA build computes.
#[inline(always)]
fn exp_fast_one(x: f32) -> f32 {
    let xd = x as f64;
    let kd = EXP_INV_LN2_N.mul_add(xd, EXP_SHIFT);
    let ki = kd.to_bits();
    let kd = kd - EXP_SHIFT;
    let r = EXP_INV_LN2_N.mul_add(xd, -kd);
    let s = f64::from_bits(EXP2_TABLE[(ki & 31) as usize].wrapping_add(ki << 47));
    let [c0, c1, c2] = EXP_POLY;
    let z = c0.mul_add(r, c1);
    let r2 = r * r;
    let y = c2.mul_add(r, 1.0);
    (z.mul_add(r2, y) * s) as f32
}

/// The error function of every value of a slice, in place, with the bits of libm's `erff`
/// (FreeBSD's algorithm, what candle's `erf_f32` and so the exact GELU use): the same
/// piecewise rational approximations and exponentials in the same f32 operations, every
/// branch computed for a vector of values and the right one kept per value, so the loop runs on
/// the vector units. The values outside the fast path (|x| < 2^-28, infinities, NaN) go
/// through `erf_f32` itself. Test `erf_in_place_is_libm_erff_bit_for_bit`.
pub fn erf_in_place(xs: &mut [f32]) {
    fast_then_slow(
        xs,
        erf_fast,
        |x| !(0x3180_0000..0x7f80_0000).contains(&(x.to_bits() & 0x7fff_ffff)),
        candle_core::cpu::erf::erf_f32,
    );
}

vectorised! {
    /// The fast path of [`erf_in_place`] for every value (outside it the result is
    /// meaningless), 64 values at a time: where all are below 0.84375 in magnitude (at
    /// initialisation nearly every GELU input), only that range's polynomial.
    fn erf_fast(xs: &mut [f32]) {
        for group in xs.chunks_mut(64) {
            let largest = group
                .iter()
                .fold(0u32, |m, x| m.max(x.to_bits() & 0x7fff_ffff));
            if largest < ERF_SMALL_BELOW {
                for x in group.iter_mut() {
                    *x = erf_small(*x);
                }
            } else {
                for x in group.iter_mut() {
                    *x = erf_fast_one(*x);
                }
            }
        }
    }
}

/// Bits of 0.84375: below it `erff` is `x + x · P(x²)/Q(x²)`.
const ERF_SMALL_BELOW: u32 = 0x3f58_0000;

/// libm's `erff` coefficients of `P` and `Q` for |x| < 0.84375 (lowest degree first; `Q`'s
/// constant term is 1).
#[allow(clippy::excessive_precision)]
const ERF_PP: [f32; 5] = [
    1.2837916613e-01,
    -3.2504209876e-01,
    -2.8481749818e-02,
    -5.7702702470e-03,
    -2.3763017452e-05,
];
#[allow(clippy::excessive_precision)]
const ERF_QQ: [f32; 6] = [
    1.0,
    3.9791721106e-01,
    6.5022252500e-02,
    5.0813062117e-03,
    1.3249473704e-04,
    -3.9602282413e-06,
];

/// `erf(x)` for `2^-28 ≤ |x| < 0.84375`: `x + x · P(x²)/Q(x²)`.
#[inline(always)]
fn erf_small(x: f32) -> f32 {
    let z = x * x;
    x + x * (horner(z, &ERF_PP) / horner(z, &ERF_QQ))
}

/// `c[0] + z · (c[1] + z · (… + z · c[n]))`, innermost first: the nesting of libm's
/// polynomials, one rounding per operation.
#[inline(always)]
fn horner(z: f32, c: &[f32]) -> f32 {
    let mut acc = c[c.len() - 1];
    for &ci in c[..c.len() - 1].iter().rev() {
        acc = ci + z * acc;
    }
    acc
}

/// `erf(x)` for finite `|x| ≥ 2^-28` (see [`erf_in_place`]), without branches: the four
/// ranges of libm's `erff` (below 0.84375, below 1.25, below 6, beyond) all computed, one
/// chosen.
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn erf_fast_one(x: f32) -> f32 {
    const ERX: f32 = 8.4506291151e-01;
    const PA: [f32; 7] = [
        -2.3621185683e-03,
        4.1485610604e-01,
        -3.7220788002e-01,
        3.1834661961e-01,
        -1.1089469492e-01,
        3.5478305072e-02,
        -2.1663755178e-03,
    ];
    const QA: [f32; 7] = [
        1.0,
        1.0642088205e-01,
        5.4039794207e-01,
        7.1828655899e-02,
        1.2617121637e-01,
        1.3637083583e-02,
        1.1984500103e-02,
    ];
    const RA: [f32; 8] = [
        -9.8649440333e-03,
        -6.9385856390e-01,
        -1.0558626175e+01,
        -6.2375331879e+01,
        -1.6239666748e+02,
        -1.8460508728e+02,
        -8.1287437439e+01,
        -9.8143291473e+00,
    ];
    const SA: [f32; 9] = [
        1.0,
        1.9651271820e+01,
        1.3765776062e+02,
        4.3456588745e+02,
        6.4538726807e+02,
        4.2900814819e+02,
        1.0863500214e+02,
        6.5702495575e+00,
        -6.0424413532e-02,
    ];
    const RB: [f32; 7] = [
        -9.8649431020e-03,
        -7.9928326607e-01,
        -1.7757955551e+01,
        -1.6063638306e+02,
        -6.3756646729e+02,
        -1.0250950928e+03,
        -4.8351919556e+02,
    ];
    const SB: [f32; 8] = [
        1.0,
        3.0338060379e+01,
        3.2579251099e+02,
        1.5367296143e+03,
        3.1998581543e+03,
        2.5530502930e+03,
        4.7452853394e+02,
        -2.2440952301e+01,
    ];
    let ix = x.to_bits() & 0x7fff_ffff;
    let ax = f32::from_bits(ix);
    let small = erf_small(x);
    // |x| < 1.25: 1 − erfc, erfc = 1 − erx − P(|x| − 1)/Q(|x| − 1).
    let s = ax - 1.0;
    let mid = 1.0 - (1.0 - ERX - horner(s, &PA) / horner(s, &QA));
    // |x| < 6: 1 − erfc, erfc = e^(−z² − 0.5625) · e^((z − |x|)(z + |x|) + R/S) / |x|, z =
    // |x| with its 13 low bits cleared, R and S of 1/x² (two sets, split at 1/0.35).
    let s = 1.0 / (ax * ax);
    let near = ix < 0x4036_db6d;
    let r = if near { horner(s, &RA) } else { horner(s, &RB) };
    let big_s = if near { horner(s, &SA) } else { horner(s, &SB) };
    let z = f32::from_bits(ix & 0xffff_e000);
    let erfc = libm_expf(-z * z - 0.5625) * libm_expf((z - ax) * (z + ax) + r / big_s) / ax;
    let big = 1.0 - erfc;
    // Beyond: 1 − 2^-120.
    let huge = 1.0 - f32::from_bits(0x0380_0000);
    let y = if ix < 0x3fa0_0000 {
        mid
    } else if ix < 0x40c0_0000 {
        big
    } else {
        huge
    };
    let signed = if x.is_sign_negative() { -y } else { y };
    if ix < ERF_SMALL_BELOW {
        small
    } else {
        signed
    }
}

/// libm's `expf` (FreeBSD's: reduction by k · ln 2 in two parts, a rational approximation, a
/// scaling by 2^k) without branches, for `|v| < 87` (the arguments `erff` gives it).
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn libm_expf(v: f32) -> f32 {
    const LN2_HI: f32 = 6.9314575195e-01;
    const LN2_LO: f32 = 1.4286067653e-06;
    const INV_LN2: f32 = 1.4426950216e+00;
    const P1: f32 = 1.6666625440e-1;
    const P2: f32 = -2.7667332906e-3;
    let hx = v.to_bits() & 0x7fff_ffff;
    let negative = v.is_sign_negative();
    // k: the nearest integer to v / ln 2 beyond 1.5 ln 2, ±1 beyond 0.5 ln 2, else 0.
    let rounded = (INV_LN2 * v + if negative { -0.5 } else { 0.5 }).trunc();
    let one = if negative { -1.0 } else { 1.0 };
    let reduced = hx > 0x3eb1_7218;
    let kf = if hx > 0x3f85_1592 {
        rounded
    } else if reduced {
        one
    } else {
        0.0
    };
    let hi = if reduced { v - kf * LN2_HI } else { v };
    let lo = if reduced { kf * LN2_LO } else { 0.0 };
    let r = if reduced { hi - lo } else { v };
    let rr = r * r;
    let c = r - rr * (P1 + rr * P2);
    let y = 1.0 + (r * c / (2.0 - c) - lo + hi);
    // 2^k from the bits of k (an integer of at most 23 bits read off 1.5 · 2^23 + k).
    let k = ((kf + 12_582_912.0).to_bits() as i32).wrapping_sub(0x4b40_0000);
    let scale = f32::from_bits((k.wrapping_add(127) as u32) << 23);
    if hx <= 0x3900_0000 {
        1.0 + v
    } else {
        y * scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table holds the bits of 2^(i/32) less i · 2^47.
    #[test]
    fn exp_table_is_the_powers_of_two() {
        for (i, &t) in EXP2_TABLE.iter().enumerate() {
            let v = f64::from_bits(t + ((i as u64) << 47));
            let want = (i as f64 / 32.0).exp2();
            assert!(
                (v - want).abs() <= want * f64::EPSILON,
                "{i}: {v} against {want}"
            );
        }
    }

    /// [`exp_in_place`] gives `f32::exp`'s bits (glibc's `expf` on x86-64 Linux with FMA, what
    /// the committed tables were computed with) on one in 61 of all f32 bit patterns (every
    /// sign, exponent and the fast path's edges among them) and on the edges themselves;
    /// elsewhere (another C library) within one unit in the last place of the f64 result.
    #[test]
    fn exp_in_place_is_glibc_expf_bit_for_bit() {
        let glibc = cfg!(all(
            target_os = "linux",
            target_env = "gnu",
            target_arch = "x86_64"
        )) && {
            #[cfg(target_arch = "x86_64")]
            {
                std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        };
        let mut edges: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            88.0,
            -88.0,
            87.99999,
            -87.99999,
            88.72283,
            88.72284,
            -103.27893,
            -103.97208,
            -104.0,
            1e-30,
            -1e-30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
        ];
        edges.extend((-2000..2000).map(|i| i as f32 * 0.0441));
        let agrees = |x: f32, y: f32| {
            let want = x.exp();
            if y.is_nan() || want.is_nan() {
                return y.is_nan() && want.is_nan();
            }
            if glibc {
                y.to_bits() == want.to_bits()
            } else {
                let exact = (x as f64).exp();
                y == want || (y as f64 - exact).abs() <= exact.abs() * f32::EPSILON as f64
            }
        };
        let mut wrong = Vec::new();
        let mut check = |inputs: &[f32]| {
            let mut ours = inputs.to_vec();
            exp_in_place(&mut ours);
            for (&x, &y) in inputs.iter().zip(&ours) {
                if !agrees(x, y) && wrong.len() < 5 {
                    wrong.push(format!("exp({x:e}) = {y:e}, f32::exp {:e}", x.exp()));
                }
            }
        };
        check(&edges);
        let patterns: Vec<u32> = (0..=u32::MAX).step_by(61).collect();
        for chunk in patterns.chunks(1 << 20) {
            let inputs: Vec<f32> = chunk.iter().map(|&b| f32::from_bits(b)).collect();
            check(&inputs);
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// [`erf_in_place`] gives libm's `erff` bits (candle's `erf_f32`) on one in 61 of all
    /// f32 bit patterns and on the edges of its ranges.
    #[test]
    fn erf_in_place_is_libm_erff_bit_for_bit() {
        let erff = candle_core::cpu::erf::erf_f32;
        let mut inputs: Vec<f32> = vec![
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
        ];
        for edge in [
            0x3180_0000u32,
            0x3f58_0000,
            0x3fa0_0000,
            0x4036_db6d,
            0x40c0_0000,
        ] {
            for b in edge - 3..edge + 3 {
                inputs.push(f32::from_bits(b));
                inputs.push(-f32::from_bits(b));
            }
        }
        inputs.extend((-4000..4000).map(|i| i as f32 * 0.00173));
        inputs.extend((0..=u32::MAX).step_by(61).map(f32::from_bits));
        let mut ours = inputs.clone();
        erf_in_place(&mut ours);
        let wrong: Vec<String> = inputs
            .iter()
            .zip(&ours)
            .filter(|(&x, &y)| {
                let want = erff(x);
                y.to_bits() != want.to_bits() && !(y.is_nan() && want.is_nan())
            })
            .take(5)
            .map(|(x, y)| format!("erf({x:e}) = {y:e}, erff {:e}", erff(*x)))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// Every one of the 2^32 f32 bit patterns gives libm's `erff` bits (by hand:
    /// `cargo test --release -- --ignored every_f32`).
    #[test]
    #[ignore = "all 2^32 values: run by hand"]
    fn erf_in_place_is_libm_erff_on_every_f32() {
        let wrong = differences_on_every_f32(erf_in_place, candle_core::cpu::erf::erf_f32);
        assert!(wrong.is_empty(), "erf against erff: {wrong:#?}");
    }

    /// The first few f32 bit patterns (of all 2^32) where `ours` (a slice in place) differs
    /// from `want` (one value), NaN matching any NaN, as `f(x) = ours, want`.
    fn differences_on_every_f32(ours: fn(&mut [f32]), want: fn(f32) -> f32) -> Vec<String> {
        let mut buf = vec![0f32; 1 << 20];
        let mut wrong = Vec::new();
        for start in (0..=u32::MAX as u64).step_by(1 << 20) {
            for (i, v) in buf.iter_mut().enumerate() {
                *v = f32::from_bits((start + i as u64) as u32);
            }
            let mut got = buf.clone();
            ours(&mut got);
            for (&x, &y) in buf.iter().zip(&got) {
                let w = want(x);
                let same = y.to_bits() == w.to_bits() || (y.is_nan() && w.is_nan());
                if !same && wrong.len() < 5 {
                    wrong.push(format!("f({x:e}) = {y:e}, {w:e}"));
                }
            }
        }
        wrong
    }

    /// Every one of the 2^32 f32 bit patterns gives `f32::exp`'s bits (run on x86-64 Linux
    /// with glibc, by hand: `cargo test --release -- --ignored every_f32`; about a minute).
    #[test]
    #[ignore = "all 2^32 values: run by hand on the machine whose tables are compared"]
    fn exp_in_place_is_glibc_expf_on_every_f32() {
        let wrong = differences_on_every_f32(exp_in_place, f32::exp);
        assert!(wrong.is_empty(), "exp against f32::exp: {wrong:#?}");
    }
}
