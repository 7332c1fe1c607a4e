//! The dense layers' matrix products and the attention's batched ones, on the cores a probe
//! has to spare.
//!
//! A large product of a dense layer ([`product`], [`matmul`]) splits its rows between the
//! cores its probe has to spare ([`super::cores`]). A product that is not split is candle's
//! call exactly, with candle's own thread setting (which the commands set to one thread
//! when they probe side by side, and leave alone for `--threads 1`).
//!
//! The values do not depend on the split. Each half is the same gemm call as candle's own
//! product (the one `Tensor::matmul` makes), and gemm's order of additions for an element
//! depends only on `k` (its depth blocking comes from `k` and the cache sizes, never from
//! the row count) as long as no half falls to its small-matrix paths, which [`MIN_ROWS`] and
//! [`MIN_WORK`] keep them from. Test `a_split_product_is_the_whole_one_bit_for_bit`.
//!
//! A batched product ([`batched_product`]) splits its items instead: each item is gemm's call
//! on one thread, as candle makes it, so the values do not depend on the split either.

use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Shape, Storage, Tensor};

use super::cores::free_cores;

/// Fewest multiply-adds (`m · n · k`) worth a second core: below this the thread's start
/// costs about what it saves.
pub const MIN_WORK: usize = 1 << 26;

/// Fewest rows of each part of a split product (gemm takes other paths for small matrices,
/// with another depth blocking).
pub const MIN_ROWS: usize = 128;

/// `lhs · rhs` of two 2-D f32 arrays with any strides (their layouts), as a new row-major
/// `m × n` array: candle's own product, split by rows over [`free_cores`] when it is large.
pub fn product(
    lhs: &CpuStorage,
    lhs_l: &Layout,
    rhs: &CpuStorage,
    rhs_l: &Layout,
) -> candle_core::Result<Vec<f32>> {
    product_in(free_cores(), lhs, lhs_l, rhs, rhs_l)
}

/// [`product`] on up to `cores` cores (fewer when it is small: [`MIN_WORK`], [`MIN_ROWS`]).
fn product_in(
    cores: usize,
    lhs_s: &CpuStorage,
    lhs_l: &Layout,
    rhs_s: &CpuStorage,
    rhs_l: &Layout,
) -> candle_core::Result<Vec<f32>> {
    let ((m, k), (k2, n)) = (lhs_l.shape().dims2()?, rhs_l.shape().dims2()?);
    if k != k2 {
        return Err(candle_core::Error::Msg(format!(
            "matmul: {:?} by {:?} do not fit",
            lhs_l.dims(),
            rhs_l.dims()
        )));
    }
    let (CpuStorage::F32(lhs), CpuStorage::F32(rhs)) = (lhs_s, rhs_s) else {
        return Err(candle_core::Error::Msg("matmul: expects f32".into()));
    };
    if m * n == 0 || k == 0 {
        // What `Tensor::matmul` gives when nothing is summed.
        return Ok(vec![0f32; m * n]);
    }
    let parts = if m * n * k >= MIN_WORK && n > 64 {
        cores.min(m / MIN_ROWS).max(1)
    } else {
        1
    };
    if parts == 1 && candle_core::utils::get_num_threads() > 1 {
        // Unsplit with candle's own threads: candle's product.
        return match lhs_s.matmul(rhs_s, (1, m, n, k), lhs_l, rhs_l)? {
            CpuStorage::F32(v) => Ok(v),
            _ => Err(candle_core::Error::Msg("matmul: expects f32".into())),
        };
    }
    Ok(in_parts(parts, (lhs, lhs_l), (rhs, rhs_l), (m, n, k)))
}

/// `lhs · rhs` (`m × k` by `k × n`, any strides) in `parts` blocks of rows, each on its own
/// thread: one part is the very gemm call candle's product makes on one thread (without
/// zeroing the destination first, which gemm writes without reading).
fn in_parts(
    parts: usize,
    (lhs, lhs_l): (&[f32], &Layout),
    (rhs, rhs_l): (&[f32], &Layout),
    (m, n, k): (usize, usize, usize),
) -> Vec<f32> {
    let lhs = &lhs[lhs_l.start_offset()..];
    let rhs = &rhs[rhs_l.start_offset()..];
    let (ls, rs) = (lhs_l.stride(), rhs_l.stride());
    let gemm = Gemm {
        n,
        k,
        lhs_rs: ls[0] as isize,
        lhs_cs: ls[1] as isize,
        rhs: rhs.as_ptr(),
        rhs_rs: rs[0] as isize,
        rhs_cs: rs[1] as isize,
    };
    // Not zeroed: gemm writes every value of dst without reading it (its `read_dst` is off).
    let mut dst: Vec<f32> = Vec::with_capacity(m * n);
    // Contiguous blocks of rows, one per part; the calling thread computes the first.
    super::cores::in_blocks(
        parts,
        &mut dst.spare_capacity_mut()[..m * n],
        n,
        |first_row, block| {
            // SAFETY: the layouts are the inputs' own, addressing inside their storage (as
            // candle's product relies on too): row `first_row` of lhs lies `first_row ·
            // lhs_rs` values from row 0, and the block holds whole rows of dst.
            unsafe {
                let start = lhs.as_ptr().offset(first_row as isize * gemm.lhs_rs);
                gemm.rows(start, block, block.len() / n)
            }
        },
    );
    // SAFETY: the blocks cover dst's first m · n values, and gemm wrote each of them (a panic
    // inside propagates before this line).
    unsafe { dst.set_len(m * n) };
    dst
}

/// One product's fixed arguments: everything but the first row of lhs and the rows of dst.
#[derive(Clone, Copy)]
struct Gemm {
    n: usize,
    k: usize,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
}

// SAFETY: `rhs` is read only, by scoped threads that end before its storage is freed.
unsafe impl Sync for Gemm {}

impl Gemm {
    /// `dst = lhs[rows] · rhs`, the gemm call candle's product makes (on one thread), for
    /// `rows` rows of lhs starting at `lhs`; dst is written, never read, so it may be
    /// uninitialised.
    ///
    /// # Safety
    /// `lhs` with the strides must address `rows × k` readable values, `rhs` `k × n`, and
    /// `dst` must hold `rows × n`.
    unsafe fn rows(&self, lhs: *const f32, dst: &mut [MaybeUninit<f32>], rows: usize) {
        debug_assert_eq!(dst.len(), rows * self.n);
        gemm::gemm(
            rows,
            self.n,
            self.k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            self.n as isize,
            false,
            lhs,
            self.lhs_cs,
            self.lhs_rs,
            self.rhs,
            self.rhs_cs,
            self.rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// `a · b` of two 2-D f32 tensors on the CPU through [`product`], as a tensor outside the
/// autograd graph (for the backward of a custom op, whose results nothing differentiates);
/// any other tensors through candle's `matmul`.
pub fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if a.rank() != 2 || b.rank() != 2 {
        return a.matmul(b);
    }
    let (m, n) = (a.dim(0)?, b.dim(1)?);
    let values = {
        let (sa, la) = a.storage_and_layout();
        let (sb, lb) = b.storage_and_layout();
        match (&*sa, &*sb) {
            (Storage::Cpu(ca @ CpuStorage::F32(_)), Storage::Cpu(cb @ CpuStorage::F32(_))) => {
                product(ca, la, cb, lb)?
            }
            _ => {
                drop((sa, sb));
                return a.matmul(b);
            }
        }
    };
    Tensor::from_vec(values, (m, n), a.device())
}

/// The products of a batch, `lhs[i] · rhs[i]` for every item `i` of the leading dimensions
/// (the same for both operands, no broadcasting; the last two are the matrices, any
/// strides), as one contiguous array (items × m × n) with its shape: the gemm call candle's
/// batched product makes for each item, the items split between the cores the probe has to
/// spare, each item on one thread. Candle's own product runs the items one after the other,
/// each split between its threads, which for the attention's many small products (B · h
/// items of T × T) costs more in waiting than it saves.
pub fn batched_product(
    lhs_s: &CpuStorage,
    lhs_l: &Layout,
    rhs_s: &CpuStorage,
    rhs_l: &Layout,
) -> candle_core::Result<(Vec<f32>, Shape)> {
    let (ld, rd) = (lhs_l.dims(), rhs_l.dims());
    let rank = ld.len();
    let fits = rank >= 2
        && rd.len() == rank
        && ld[..rank - 2] == rd[..rank - 2]
        && ld[rank - 1] == rd[rank - 2];
    if !fits {
        return Err(candle_core::Error::Msg(format!(
            "batched matmul: {ld:?} by {rd:?} do not fit"
        )));
    }
    let (CpuStorage::F32(lhs), CpuStorage::F32(rhs)) = (lhs_s, rhs_s) else {
        return Err(candle_core::Error::Msg(
            "batched matmul: expects f32".into(),
        ));
    };
    let (m, k, n) = (ld[rank - 2], ld[rank - 1], rd[rank - 1]);
    let items: usize = ld[..rank - 2].iter().product();
    let mut dims = ld[..rank - 2].to_vec();
    dims.extend([m, n]);
    let shape = Shape::from(dims);
    if items * m * n == 0 || k == 0 {
        return Ok((vec![0f32; items * m * n], shape));
    }
    let (ls, rs) = (lhs_l.stride(), rhs_l.stride());
    let gemm = Gemm {
        n,
        k,
        lhs_rs: ls[rank - 2] as isize,
        lhs_cs: ls[rank - 1] as isize,
        rhs: std::ptr::null(),
        rhs_rs: rs[rank - 2] as isize,
        rhs_cs: rs[rank - 1] as isize,
    };
    let (lhs, rhs) = (&lhs[lhs_l.start_offset()..], &rhs[rhs_l.start_offset()..]);
    let parts = if items * m * n * k >= MIN_WORK {
        free_cores()
    } else {
        1
    };
    let mut dst: Vec<f32> = Vec::with_capacity(items * m * n);
    super::cores::in_blocks(
        parts,
        &mut dst.spare_capacity_mut()[..items * m * n],
        m * n,
        |first_item, block| {
            for (i, item) in block.chunks_exact_mut(m * n).enumerate() {
                let (a, b) = (
                    item_offset(ld, ls, first_item + i),
                    item_offset(rd, rs, first_item + i),
                );
                let gemm = Gemm {
                    rhs: rhs[b..].as_ptr(),
                    ..gemm
                };
                // SAFETY: the offsets and strides are the layouts' own, addressing inside
                // their storage (as candle's product relies on too); `item` holds m × n.
                unsafe { gemm.rows(lhs[a..].as_ptr(), item, m) }
            }
        },
    );
    // SAFETY: the blocks cover the m · n values of every item, each written by gemm (a
    // panic inside propagates before this line).
    unsafe { dst.set_len(items * m * n) };
    Ok((dst, shape))
}

/// Where item `item` (its index over the leading dimensions, in order) of an operand with
/// `dims` and `strides` starts, from the layout's start.
fn item_offset(dims: &[usize], strides: &[usize], mut item: usize) -> usize {
    let lead = dims.len() - 2;
    let mut offset = 0;
    for d in (0..lead).rev() {
        offset += (item % dims[d]) * strides[d];
        item /= dims[d];
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        rng.normal_vec(len, 1.0)
    }

    #[test]
    fn a_split_product_is_the_whole_one_bit_for_bit() {
        // Shapes of the dense layers (3072 tokens) and of their gradients, odd sizes
        // included; lhs contiguous and transposed, rhs contiguous and transposed.
        let shapes = [
            (3072, 768, 256),
            (1000, 300, 700),
            (513, 129, 1025),
            (256, 1536, 3072),
        ];
        for (i, &(m, n, k)) in shapes.iter().enumerate() {
            let a = Tensor::from_vec(values(m * k, i as u64), (m, k), &candle_core::Device::Cpu)
                .unwrap();
            let b = Tensor::from_vec(
                values(k * n, 10 + i as u64),
                (k, n),
                &candle_core::Device::Cpu,
            )
            .unwrap();
            let at = a.t().unwrap().contiguous().unwrap().t().unwrap();
            let bt = b.t().unwrap().contiguous().unwrap().t().unwrap();
            for (x, y) in [(&a, &b), (&at, &b), (&a, &bt), (&at, &bt)] {
                let whole = x
                    .matmul(y)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let (sx, lx) = x.storage_and_layout();
                let (sy, ly) = y.storage_and_layout();
                let (Storage::Cpu(cx), Storage::Cpu(cy)) = (&*sx, &*sy) else {
                    panic!("on the CPU");
                };
                let (CpuStorage::F32(vx), CpuStorage::F32(vy)) = (cx, cy) else {
                    panic!("f32");
                };
                for cores in [1, 2, 3] {
                    let split = product_in(cores, cx, lx, cy, ly).unwrap();
                    let parts = in_parts(cores, (vx, lx), (vy, ly), (m, n, k));
                    for ours in [split, parts] {
                        let same = whole
                            .iter()
                            .zip(&ours)
                            .all(|(p, q)| p.to_bits() == q.to_bits());
                        assert!(
                            same,
                            "{m}×{n}×{k} in {cores} parts differs from candle's product"
                        );
                    }
                }
            }
        }
        // A small product in one part (gemm's small-matrix paths): candle's call exactly.
        for (m, n, k) in [(37, 20, 50), (5, 3, 2), (1, 9, 4)] {
            let a = Tensor::from_vec(values(m * k, 3), (m, k), &candle_core::Device::Cpu).unwrap();
            let b = Tensor::from_vec(values(k * n, 4), (k, n), &candle_core::Device::Cpu).unwrap();
            let whole = a
                .matmul(&b)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let (sa, la) = a.storage_and_layout();
            let (sb, lb) = b.storage_and_layout();
            let (Storage::Cpu(CpuStorage::F32(va)), Storage::Cpu(CpuStorage::F32(vb))) =
                (&*sa, &*sb)
            else {
                panic!("f32 on the CPU");
            };
            let ours = in_parts(1, (va, la), (vb, lb), (m, n, k));
            assert_eq!(
                whole.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                ours.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{m}×{n}×{k}"
            );
        }
        // Through the tensor entry point, with a lease of two cores.
        let _lease = super::super::cores::Lease::new(2);
        let (a, b) = (
            Tensor::from_vec(values(600 * 400, 7), (600, 400), &candle_core::Device::Cpu).unwrap(),
            Tensor::from_vec(values(400 * 300, 8), (400, 300), &candle_core::Device::Cpu).unwrap(),
        );
        let whole = a
            .matmul(&b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let ours = matmul(&a, &b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(
            whole.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            ours.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}
