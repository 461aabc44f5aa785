//! The interface between the host and the CUDA kernels, defined once: the codes both sides share
//! (score modes, concat blocks), every kernel's parameter struct, and the store dtypes the store
//! kernels are instantiated for. The crate uses these definitions directly (the enums are
//! re-exported from [`crate::config`], the structs are what `src/cuda/` fills and launches);
//! `build.rs` includes this file too and writes [`header`]'s text to `$OUT_DIR/hcn_abi.h`, which
//! `kernels/common.cuh` includes: the same structs in C (with `static_assert`s of every size and
//! offset), the codes as `#define`s, and one macro per kernel that defines its `extern "C"`
//! entry points. Nothing of it can differ between the two sides. Plain Rust, no dependencies
//! (build.rs compiles it).
//!
//! Adding an argument to a kernel: a field in its struct below, and the kernel body that reads
//! `p.<field>`; the host code that fills the struct (`src/cuda/plan.rs`) then fails to compile
//! until it sets the field.

// Without the `cuda` feature only the codes are used (by the CPU executor's config).
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use std::marker::PhantomData;

/// How a candidate's `n` inner products become one logit (SPEC §1.5). The discriminant is the
/// `ScoreParams::mode` the `score_*` kernels switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ScoreMode {
    /// `y = Σ_j softmax(s)_j s_j` (eq. 8).
    Softmax = 0,
    /// `y = max_j s_j`.
    Max = 1,
    /// `y = mean_j s_j`.
    Mean = 2,
}

/// A concat block of the co-interest network (SPEC §1.3). The discriminant is the block's
/// 2-bit code in `CoFusionParams::block_codes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Block {
    /// `L̂`, the long-term interests.
    Long = 0,
    /// `Ŝ`, the short-term interests.
    Short = 1,
    /// `L̃ = softmax_rows(E) Ŝ`.
    LongAligned = 2,
    /// `S̃ = softmax_cols(E)ᵀ L̂`.
    ShortAligned = 3,
}

/// Every score mode with its header name.
pub const SCORE_MODES: [(ScoreMode, &str); 3] = [
    (ScoreMode::Softmax, "SOFTMAX"),
    (ScoreMode::Max, "MAX"),
    (ScoreMode::Mean, "MEAN"),
];

/// Every concat block with its header name.
pub const BLOCKS: [(Block, &str); 4] = [
    (Block::Long, "LONG"),
    (Block::Short, "SHORT"),
    (Block::LongAligned, "LONG_ALIGNED"),
    (Block::ShortAligned, "SHORT_ALIGNED"),
];

// ------------------------------------------------------------------------- kernel variants

/// One compiled instance of a kernel, `<op>_<suffix>` (e.g. `score_f16`). The compute kernels
/// have one, [`Variant::F32`]; the store kernels one per [`STORE_DTYPES`] row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Variant {
    /// The kernel name's suffix.
    pub suffix: &'static str,
    /// The C element type the kernel body is instantiated with.
    pub c_type: &'static str,
}

impl Variant {
    /// F32 in, F32 out: the only variant of the compute kernels.
    pub const F32: Variant = Variant {
        suffix: "f32",
        c_type: "float",
    };

    /// Whether the tensor-core kernels `score_mma` and `attend_mma` have this variant
    /// ([`MMA_STORE_DTYPES`]).
    pub fn has_mma(self) -> bool {
        STORE_DTYPES
            .iter()
            .any(|(n, v)| *v == self && MMA_STORE_DTYPES.contains(n))
    }

    /// The store kernels' variant for a store of dtype `name` (`tensor::DType::name()`), if the
    /// kernels are instantiated for it.
    pub fn for_store(name: &str) -> Option<Variant> {
        STORE_DTYPES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, v)| v)
    }
}

/// The dtypes of stored item rows (SPEC §3) the store kernels (`attend`, `score`) are
/// instantiated for, by `tensor::DType::name()`. build.rs defines one entry point per row; the
/// kernel bodies read a row element with `hcn_load` (`kernels/common.cuh`, one overload per
/// C type). A new store dtype is one row here and one `hcn_load` overload. I8 (SPEC §3) also
/// reads each row's scale (`AttendParams::scales`, `ScoreParams::scales`; `HcnStore<T>::scaled`
/// in `kernels/common.cuh`) and `score.cu` has a 128-bit-load path of its own for it.
pub const STORE_DTYPES: [(&str, Variant); 4] = [
    ("F32", Variant::F32),
    (
        "F16",
        Variant {
            suffix: "f16",
            c_type: "__half",
        },
    ),
    (
        "BF16",
        Variant {
            suffix: "bf16",
            c_type: "__nv_bfloat16",
        },
    ),
    (
        "I8",
        Variant {
            suffix: "i8",
            c_type: "int8_t",
        },
    ),
];

/// The store dtypes (by `tensor::DType::name()`) the tensor-core kernels `score_mma` and
/// `attend_mma` are instantiated for: rows whose values are exact in F16 (F16 itself, I8's
/// integers q).
pub const MMA_STORE_DTYPES: [&str; 2] = ["F16", "I8"];

/// Which variants a kernel is compiled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variants {
    /// [`Variant::F32`] only; the body is a plain function of the parameter struct.
    F32,
    /// One per [`STORE_DTYPES`] row; the body is a template over the store's element type.
    StoreDtypes,
    /// One per [`MMA_STORE_DTYPES`] entry (its [`STORE_DTYPES`] variant); the body is a
    /// template over the store's element type.
    MmaStoreDtypes,
}

impl Variants {
    /// The variants, in [`STORE_DTYPES`] order.
    pub fn list(self) -> Vec<Variant> {
        match self {
            Variants::F32 => vec![Variant::F32],
            Variants::StoreDtypes => STORE_DTYPES.iter().map(|&(_, v)| v).collect(),
            Variants::MmaStoreDtypes => STORE_DTYPES
                .iter()
                .filter(|(n, _)| MMA_STORE_DTYPES.contains(n))
                .map(|&(_, v)| v)
                .collect(),
        }
    }
}

// ------------------------------------------------------------------- parameter field types

/// The type of a parameter-struct field as C sees it: its spelling, size and alignment (the C
/// ABI's, from which [`KernelDesc::layout`] computes the offsets the generated header asserts and
/// a test compares with Rust's `repr(C)` layout).
pub trait CType {
    /// The C spelling, e.g. `const float*`.
    fn c() -> String;
    const SIZE: usize;
    const ALIGN: usize;
}

macro_rules! scalar_ctype {
    ($($t:ty => $c:literal, $n:literal;)*) => {
        $(impl CType for $t {
            fn c() -> String {
                $c.to_string()
            }
            const SIZE: usize = $n;
            const ALIGN: usize = $n;
        })*
    };
}

scalar_ctype! {
    i32 => "int", 4;
    u32 => "unsigned", 4;
    i64 => "long long", 8;
    f32 => "float", 4;
    // `repr(i32)`: the kernels compare it with the HCN_SCORE_* codes.
    ScoreMode => "int", 4;
}

/// What a device address may point at.
pub trait Pointee {
    /// The C element type.
    const C: &'static str;
}

/// The rows of an item store, in the store's dtype (`const void*` in C; the store kernel
/// variant casts it to its element type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreRows {}

impl Pointee for f32 {
    const C: &'static str = "float";
}
impl Pointee for i32 {
    const C: &'static str = "int";
}
impl Pointee for u32 {
    const C: &'static str = "unsigned";
}
impl Pointee for StoreRows {
    const C: &'static str = "void";
}

/// The device address of memory a kernel reads (`const T*`). On the GPU a `CUdeviceptr`; in the
/// CPU emulation a host address. Made by `src/cuda/backend.rs` (`input`), which checks the
/// extent against the buffer.
#[repr(transparent)]
pub struct In<T>(u64, PhantomData<fn() -> T>);

/// The device address of memory a kernel writes (`T*`); see [`In`].
#[repr(transparent)]
pub struct Out<T>(u64, PhantomData<fn() -> T>);

macro_rules! address {
    ($($p:ident => $cv:literal),*) => {
        $(
            impl<T> $p<T> {
                /// Wraps a device address. Launching a kernel with it is what is unsafe.
                pub const fn from_addr(addr: u64) -> Self {
                    $p(addr, PhantomData)
                }
                pub const fn addr(self) -> u64 {
                    self.0
                }
            }
            impl<T> Clone for $p<T> {
                fn clone(&self) -> Self {
                    *self
                }
            }
            impl<T> Copy for $p<T> {}
            impl<T> PartialEq for $p<T> {
                fn eq(&self, other: &Self) -> bool {
                    self.0 == other.0
                }
            }
            impl<T> std::fmt::Debug for $p<T> {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    write!(f, "{}({:#x})", stringify!($p), self.0)
                }
            }
            impl<T: Pointee> CType for $p<T> {
                fn c() -> String {
                    format!("{}{}*", $cv, T::C)
                }
                const SIZE: usize = 8;
                const ALIGN: usize = 8;
            }
        )*
    };
}

address!(In => "const ", Out => "");

// ------------------------------------------------------------------- the parameter structs

/// One field of a parameter struct.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    /// [`CType::c`] of its type.
    pub c: fn() -> String,
    pub size: usize,
    pub align: usize,
    /// Its doc comment.
    pub doc: &'static str,
}

/// A kernel: its name stem, variants, parameter struct and the struct's fields.
#[derive(Debug)]
pub struct KernelDesc {
    /// `kernels/<op>.cu`; the entry points are `<op>_<suffix>`.
    pub op: &'static str,
    pub variants: Variants,
    /// The parameter struct's name, the same in Rust and C.
    pub params: &'static str,
    pub doc: &'static str,
    pub fields: &'static [Field],
}

impl KernelDesc {
    /// The C layout of the parameter struct: every field at the next multiple of its alignment,
    /// the size rounded up to the largest alignment. Returns (offsets, size).
    pub fn layout(&self) -> (Vec<usize>, usize) {
        let (mut at, mut align) = (0usize, 1usize);
        let mut offsets = Vec::with_capacity(self.fields.len());
        for f in self.fields {
            at = at.next_multiple_of(f.align);
            offsets.push(at);
            at += f.size;
            align = align.max(f.align);
        }
        (offsets, at.next_multiple_of(align))
    }

    /// The names of the kernel's entry points, `<op>_<suffix>`.
    pub fn names(&self) -> Vec<String> {
        self.variants
            .list()
            .iter()
            .map(|v| format!("{}_{}", self.op, v.suffix))
            .collect()
    }
}

/// A kernel's parameter struct: the one argument of its entry points, passed by value.
///
/// # Safety
/// Implemented only by [`kernel_params!`]: `#[repr(C)]`, every field a [`CType`] (plain data),
/// and [`KernelParams::DESC`] lists the fields in declaration order.
pub unsafe trait KernelParams: Copy + 'static {
    const DESC: &'static KernelDesc;
    /// `(size_of, [offset_of each field])` as rustc laid the struct out (checked against
    /// [`KernelDesc::layout`] by a test, as the header checks C's with `static_assert`s).
    fn rust_layout() -> (usize, Vec<usize>);
}

/// Defines the parameter structs (see the invocation below for the syntax) and [`KERNELS`].
macro_rules! kernel_params {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident for $op:literal, $variants:ident {
            $( $(#[doc = $fdoc:literal])* $field:ident: $ty:ty, )*
        }
    )*) => {
        $(
            $(#[doc = $doc])*
            #[repr(C)]
            #[derive(Debug, Clone, Copy, PartialEq)]
            pub struct $name {
                $( $(#[doc = $fdoc])* pub $field: $ty, )*
            }

            // SAFETY: `repr(C)` above, every field a `CType`, `DESC.fields` in declaration order.
            unsafe impl KernelParams for $name {
                const DESC: &'static KernelDesc = &KernelDesc {
                    op: $op,
                    variants: Variants::$variants,
                    params: stringify!($name),
                    doc: concat!($($doc, "\n",)*),
                    fields: &[$(Field {
                        name: stringify!($field),
                        c: <$ty as CType>::c,
                        size: <$ty as CType>::SIZE,
                        align: <$ty as CType>::ALIGN,
                        doc: concat!($($fdoc,)*),
                    },)*],
                };
                fn rust_layout() -> (usize, Vec<usize>) {
                    (
                        std::mem::size_of::<$name>(),
                        vec![$(std::mem::offset_of!($name, $field),)*],
                    )
                }
            }
        )*

        /// Every kernel, in `kernels/` order.
        pub const KERNELS: &[&KernelDesc] = &[$(<$name as KernelParams>::DESC,)*];

        #[cfg(test)]
        fn rust_layouts() -> Vec<(&'static KernelDesc, (usize, Vec<usize>))> {
            vec![$((<$name as KernelParams>::DESC, <$name>::rust_layout()),)*]
        }
    };
}

kernel_params! {
    /// `attend.cu`: fused attention 1/2 of a layer (SPEC §1.2 by its rewrite): per (key chunk,
    /// head, sequence of either tower) the flash-decoding partials of `A_k X` straight over the
    /// token store: per query row the chunk's max score, Σ exp and Σ exp · x_t.
    AttendParams for "attend", StoreDtypes {
        /// The token store's `N × dim` rows, in the variant's dtype.
        store: In<StoreRows>,
        /// I8 stores: the `N` per-row scales (row r is `scales[r] · q_r`, SPEC §3). Null for the
        /// float dtypes, whose variants never read it.
        scales: In<f32>,
        /// The long sequences' token rows of every user, each `< N`.
        long_rows: In<u32>,
        /// `users + 1` ascending offsets into `long_rows`.
        long_offsets: In<i32>,
        /// The short sequences' token rows.
        short_rows: In<u32>,
        /// `users + 1` ascending offsets into `short_rows`.
        short_offsets: In<i32>,
        /// `Q̃ = Q_k Wk_k / sqrt(d)` per (tower, user, head), `n × dim` each; (tower, user,
        /// head)'s at `tower · qt_tower_stride + user · qt_user_stride + head · n · dim`.
        qt: In<f32>,
        /// `2·users · heads · chunks` blocks of `n` rows of `dim + 2`: `Σ p x` (dim), max, Σ p.
        part: Out<f32>,
        /// Elements between the two towers' Q̃ (0: shared).
        qt_tower_stride: i64,
        /// Elements between two users' Q̃ (0: shared, layer 0's).
        qt_user_stride: i64,
        users: i32,
        n: i32,
        dim: i32,
        heads: i32,
        /// Key chunks per sequence in the grid (and in `part`).
        chunks: i32,
        /// Keys per chunk, a multiple of 32.
        chunk_keys: i32,
    }

    /// `attend_mma.cu`: `attend.cu`'s partials on tensor cores (`mma.sync` m16n8k16, F16
    /// operands, F32 accumulation) for F16 and I8 token stores with `dim` a multiple of 16; the
    /// fields are [`AttendParams`]'s (`From<AttendParams>`), the limits `launch::attend_mma`'s.
    AttendMmaParams for "attend_mma", MmaStoreDtypes {
        /// The token store's `N × dim` rows, in the variant's dtype, 16-byte aligned.
        store: In<StoreRows>,
        /// I8 stores: the `N` per-row scales (row r is `scales[r] · q_r`, SPEC §3). Null for the
        /// float dtypes, whose variants never read it.
        scales: In<f32>,
        /// The long sequences' token rows of every user, each `< N`.
        long_rows: In<u32>,
        /// `users + 1` ascending offsets into `long_rows`.
        long_offsets: In<i32>,
        /// The short sequences' token rows.
        short_rows: In<u32>,
        /// `users + 1` ascending offsets into `short_rows`.
        short_offsets: In<i32>,
        /// `Q̃ = Q_k Wk_k / sqrt(d)` per (tower, user, head), `n × dim` each; (tower, user,
        /// head)'s at `tower · qt_tower_stride + user · qt_user_stride + head · n · dim`.
        qt: In<f32>,
        /// `2·users · heads · chunks` blocks of `n` rows of `dim + 2`: `Σ p x` (dim), max, Σ p.
        part: Out<f32>,
        /// Elements between the two towers' Q̃ (0: shared).
        qt_tower_stride: i64,
        /// Elements between two users' Q̃ (0: shared, layer 0's).
        qt_user_stride: i64,
        users: i32,
        n: i32,
        dim: i32,
        heads: i32,
        /// Key chunks per sequence in the grid (and in `part`).
        chunks: i32,
        /// Keys per chunk, a multiple of 32.
        chunk_keys: i32,
    }

    /// `attend_combine.cu`: fused attention 2/2 of layer `layer`: per sequence the combine of
    /// `attend`'s partials into `A_k X`, `Wv`, `Wo` into the concat, then the next layer's `Q̃`
    /// or (last layer) the merge. Weights of both towers stacked, long first.
    AttendCombineParams for "attend_combine", F32 {
        /// `users + 1` ascending offsets of the long sequences.
        long_offsets: In<i32>,
        /// `users + 1` ascending offsets of the short sequences.
        short_offsets: In<i32>,
        /// `attend`'s output for this layer.
        part: In<f32>,
        /// `Wvᵀ` (`dim × dim`, in × out) per tower.
        wvt: In<f32>,
        /// `bv` per tower.
        bv: In<f32>,
        /// `Woᵀ` per tower.
        wot: In<f32>,
        /// `bo` per tower.
        bo: In<f32>,
        /// The next layer's `Wqᵀ` per tower; null at the last layer.
        wqt: In<f32>,
        /// The next layer's `bq` per tower; null at the last layer.
        bq: In<f32>,
        /// The next layer's `Wk` as stored (`[out, in]`) per tower; null at the last layer.
        wk: In<f32>,
        /// `Wmᵀ` (`layers·dim × dim`) per tower; null before the last layer.
        wmt: In<f32>,
        /// `bm` per tower; null before the last layer.
        bm: In<f32>,
        /// Per sequence `heads·n·dim + 2·n·dim` floats of workspace.
        scratch: Out<f32>,
        /// Per sequence `concat(H_0 … H_{r-1})`, `n × layers·dim`.
        hcat: Out<f32>,
        /// Per sequence the next layer's `Q̃` (`heads` blocks of `n × dim`); null at the last layer.
        qt_next: Out<f32>,
        /// Per sequence `F` (`n × dim`), long sequences first; null before the last layer.
        out: Out<f32>,
        users: i32,
        n: i32,
        dim: i32,
        heads: i32,
        /// As given to `attend`.
        chunks: i32,
        /// As given to `attend`.
        chunk_keys: i32,
        layer: i32,
        layers: i32,
    }

    /// `co_fusion.cu`: E, the two softmax alignments, the concat of the blocks (SPEC §1.3), its
    /// projection `X̃` and the fusion into `X^U` (§1.4), per user.
    CoFusionParams for "co_fusion", F32 {
        /// `F` of both towers: `users · n` rows of `L̂`, then `users · n` rows of `Ŝ`, `dim` each.
        towers: In<f32>,
        /// Workspace, `users · n` rows of `num_blocks · dim`.
        cat: Out<f32>,
        /// `Wcᵀ`, `num_blocks·dim × dim`.
        co_wt: In<f32>,
        co_b: In<f32>,
        /// `users · n` rows of `2·dim`: the right half holds `X̂` (input), the left half gets `X̃`.
        fuse: Out<f32>,
        /// `Wuᵀ`, `2·dim × dim`.
        fusion_wt: In<f32>,
        fusion_b: In<f32>,
        /// `X^U`, `users · n × dim`.
        xu: Out<f32>,
        users: i32,
        n: i32,
        dim: i32,
        num_blocks: i32,
        /// `Block` codes, 2 bits each, block `t` in bits `[2t, 2t + 2)`.
        block_codes: u32,
    }

    /// `score.cu`: one score per candidate row (SPEC §1.5, eq. 8), many users per launch.
    ScoreParams for "score", StoreDtypes {
        /// The candidate store's `N × dim` rows, in the variant's dtype.
        store: In<StoreRows>,
        /// I8 stores: the `N` per-row scales (row r is `scales[r] · q_r`, SPEC §3). Null for the
        /// float dtypes, whose variants never read it.
        scales: In<f32>,
        /// Candidate rows of every user, each `< N`.
        rows: In<u32>,
        /// `users + 1` ascending offsets into `rows` and `out`.
        cand_offsets: In<i32>,
        /// `X^U`, `users · n × dim`, contiguous.
        xu: In<f32>,
        /// One score per entry of `rows`.
        out: Out<f32>,
        dim: i32,
        n: i32,
        mode: ScoreMode,
    }

    /// `score_mma.cu`: `score.cu`'s scores on tensor cores (`mma.sync` m16n8k16, F16 operands,
    /// F32 accumulation) for F16 and I8 stores with `dim` a multiple of 16; the fields are
    /// [`ScoreParams`]'s (`From<ScoreParams>`), the limits `launch::score_mma`'s.
    ScoreMmaParams for "score_mma", MmaStoreDtypes {
        /// The candidate store's `N × dim` rows, in the variant's dtype, 16-byte aligned.
        store: In<StoreRows>,
        /// I8 stores: the `N` per-row scales; null for F16.
        scales: In<f32>,
        /// Candidate rows of every user, each `< N`.
        rows: In<u32>,
        /// `users + 1` ascending offsets into `rows` and `out`.
        cand_offsets: In<i32>,
        /// `X^U`, `users · n × dim`, contiguous.
        xu: In<f32>,
        /// One score per entry of `rows`.
        out: Out<f32>,
        dim: i32,
        n: i32,
        mode: ScoreMode,
    }

    /// `mma_test.cu`, a test of the `mma.sync` / `cp.async` wrappers (`kernels/common.cuh`) and
    /// of their emulation, not launched by the plan: one warp copies A, B and C to shared memory
    /// with `cp.async`, then `d = A B + C` with one m16n8k16 (A, B rounded to F16).
    MmaTestParams for "mma_test", F32 {
        /// `16 × 16`, row-major.
        a: In<f32>,
        /// `16 × 8` (K × N), row-major.
        b: In<f32>,
        /// `16 × 8`, row-major.
        c: In<f32>,
        /// `16 × 8`, row-major.
        d: Out<f32>,
    }

    /// `topk.cu`: per user the `k` largest scores (ties: lower position), in position order: the
    /// exact one-block select. The plan runs the multi-block `topk_hist` → `topk_compact` →
    /// `topk_select` below, whose select falls back to this kernel's body on overflow.
    TopkParams for "topk", F32 {
        /// Every user's scores, back to back.
        scores: In<f32>,
        /// `users + 1` ascending offsets into `scores`.
        offsets: In<i32>,
        /// `users · k` slots: the position relative to the user's first score, −1 when unused.
        out_pos: Out<i32>,
        /// `users · k` slots: the score.
        out_score: Out<f32>,
        k: i32,
    }

    /// `topk.cu`, multi-block top-k 1/3: per user a histogram of the scores' top 12 ordered bits.
    TopkHistParams for "topk_hist", F32 {
        /// Every user's scores, back to back.
        scores: In<f32>,
        /// `users + 1` ascending offsets into `scores`.
        offsets: In<i32>,
        /// `users · TOPK_BUCKETS` counts, zero before the launch; the kernel adds to them.
        hist: Out<i32>,
    }

    /// `topk.cu`, multi-block top-k 2/3: the threshold bucket from the histogram, then the
    /// positions at or above it appended to the user's survivor list (nothing on overflow).
    TopkCompactParams for "topk_compact", F32 {
        scores: In<f32>,
        offsets: In<i32>,
        /// `users · TOPK_BUCKETS` counts from `topk_hist`.
        hist: In<i32>,
        /// `users · capacity` slots: positions relative to the user's first score, unordered.
        survivors: Out<i32>,
        /// `users` survivor counts, zero before the launch.
        counts: Out<i32>,
        k: i32,
        /// Survivor slots per user, `1 ..= TOPK_CAPACITY`.
        capacity: i32,
    }

    /// `topk.cu`, multi-block top-k 3/3: the survivors sorted and the best `k` written best
    /// first, or (overflow) the exact one-block select, which writes them in position order.
    TopkSelectParams for "topk_select", F32 {
        scores: In<f32>,
        offsets: In<i32>,
        /// From `topk_compact`.
        survivors: In<i32>,
        /// From `topk_compact`.
        counts: In<i32>,
        /// `users · k` slots: the position relative to the user's first score, −1 when unused.
        out_pos: Out<i32>,
        /// `users · k` slots: the score.
        out_score: Out<f32>,
        k: i32,
        capacity: i32,
    }
}

impl From<ScoreParams> for ScoreMmaParams {
    fn from(p: ScoreParams) -> Self {
        ScoreMmaParams {
            store: p.store,
            scales: p.scales,
            rows: p.rows,
            cand_offsets: p.cand_offsets,
            xu: p.xu,
            out: p.out,
            dim: p.dim,
            n: p.n,
            mode: p.mode,
        }
    }
}

impl From<AttendParams> for AttendMmaParams {
    fn from(p: AttendParams) -> Self {
        AttendMmaParams {
            store: p.store,
            scales: p.scales,
            long_rows: p.long_rows,
            long_offsets: p.long_offsets,
            short_rows: p.short_rows,
            short_offsets: p.short_offsets,
            qt: p.qt,
            part: p.part,
            qt_tower_stride: p.qt_tower_stride,
            qt_user_stride: p.qt_user_stride,
            users: p.users,
            n: p.n,
            dim: p.dim,
            heads: p.heads,
            chunks: p.chunks,
            chunk_keys: p.chunk_keys,
        }
    }
}

/// The C header the kernels include (`hcn_abi.h`).
#[allow(dead_code)] // used by build.rs, and by a test
pub fn header() -> String {
    let mut h = String::from(
        "// Generated by build.rs from src/abi.rs: the interface host and kernels share. Do not edit.\n\
         #pragma once\n#include <stddef.h>\n\n",
    );
    for (m, name) in SCORE_MODES {
        h.push_str(&format!("#define HCN_SCORE_{name} {}\n", m as i32));
    }
    for (b, name) in BLOCKS {
        h.push_str(&format!("#define HCN_BLOCK_{name} {}u\n", b as i32));
    }
    for k in KERNELS {
        h.push('\n');
        h.push_str(&params_struct(k));
        h.push_str(&entry_points(k));
    }
    h.push_str(
        "\n// Every entry point, for the CPU emulation's launcher (kernels/emu/launch.cpp).\n",
    );
    h.push_str("#define HCN_KERNELS(X)");
    for k in KERNELS {
        for name in k.names() {
            h.push_str(&format!(" X({name})"));
        }
    }
    h.push('\n');
    h
}

fn comment(text: &str, indent: &str) -> String {
    text.lines()
        .map(|l| format!("{indent}//{}\n", l.trim_end()))
        .collect()
}

/// The struct in C, then a `static_assert` of its size and of every field's offset.
fn params_struct(k: &KernelDesc) -> String {
    let name = k.params;
    let mut s = comment(k.doc, "");
    s.push_str(&format!("struct {name} {{\n"));
    for f in k.fields {
        s.push_str(&comment(f.doc, "  "));
        s.push_str(&format!("  {} {};\n", (f.c)(), f.name));
    }
    s.push_str("};\n");
    let (offsets, size) = k.layout();
    let why = "differs from src/abi.rs";
    s.push_str(&format!(
        "static_assert(sizeof({name}) == {size}, \"sizeof({name}) {why}\");\n"
    ));
    for (f, at) in k.fields.iter().zip(offsets) {
        let field = f.name;
        s.push_str(&format!(
            "static_assert(offsetof({name}, {field}) == {at}, \"offsetof({name}, {field}) {why}\");\n"
        ));
    }
    s
}

/// `HCN_KERNEL_<op>(body)`: defines the kernel's `extern "C"` entry points, each calling `body`
/// with the parameter struct (`body<T>` for the store kernels, `T` the variant's element type).
fn entry_points(k: &KernelDesc) -> String {
    let mut s = format!("#define HCN_KERNEL_{}(body)", k.op);
    for v in k.variants.list() {
        let call = match k.variants {
            Variants::F32 => "body(p)".to_string(),
            Variants::StoreDtypes | Variants::MmaStoreDtypes => {
                format!("body<{}>(p)", v.c_type)
            }
        };
        s.push_str(&format!(
            " \\\n  extern \"C\" __global__ void {}_{}(const {} p) {{ {call}; }}",
            k.op, v.suffix, k.params
        ));
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_defines_every_code_once() {
        let h = header();
        assert!(h.contains("#define HCN_SCORE_SOFTMAX 0\n"));
        assert!(h.contains("#define HCN_SCORE_MEAN 2\n"));
        assert!(h.contains("#define HCN_BLOCK_SHORT_ALIGNED 3u\n"));
        assert_eq!(
            h.matches("#define HCN_SCORE_").count() + h.matches("#define HCN_BLOCK_").count(),
            SCORE_MODES.len() + BLOCKS.len()
        );
    }

    /// The numbers the header's `static_assert`s check on the C side, checked here on Rust's.
    #[test]
    fn rust_lays_every_params_struct_out_as_the_header_asserts() {
        let layouts = rust_layouts();
        assert_eq!(layouts.len(), KERNELS.len());
        for (desc, (size, offsets)) in layouts {
            let (want_offsets, want_size) = desc.layout();
            assert_eq!(size, want_size, "size_of::<{}>()", desc.params);
            assert_eq!(offsets, want_offsets, "offset_of!({}, ..)", desc.params);
            // CUDA passes at most 4 KB of kernel parameters (32 KB from Volta on, CUDA 12.1).
            assert!(size <= 4096, "{}", desc.params);
            let h = header();
            assert!(h.contains(&format!(
                "static_assert(sizeof({0}) == {size}, \"sizeof({0}) differs from src/abi.rs\");",
                desc.params
            )));
            for (f, at) in desc.fields.iter().zip(&offsets) {
                assert!(
                    h.contains(&format!("offsetof({}, {}) == {at},", desc.params, f.name)),
                    "{}.{}",
                    desc.params,
                    f.name
                );
            }
        }
    }

    #[test]
    fn the_layout_pads_as_c_does() {
        // A 4-byte field before an 8-byte one leaves a hole; the size rounds up to 8.
        const F: [Field; 3] = [
            Field {
                name: "a",
                c: <i32 as CType>::c,
                size: 4,
                align: 4,
                doc: "",
            },
            Field {
                name: "b",
                c: <In<f32> as CType>::c,
                size: 8,
                align: 8,
                doc: "",
            },
            Field {
                name: "c",
                c: <i32 as CType>::c,
                size: 4,
                align: 4,
                doc: "",
            },
        ];
        let d = KernelDesc {
            op: "t",
            variants: Variants::F32,
            params: "T",
            doc: "",
            fields: &F,
        };
        assert_eq!(d.layout(), (vec![0, 8, 16], 24));
    }

    #[test]
    fn every_entry_point_is_named_once_with_its_struct() {
        let h = header();
        let mut names: Vec<String> = KERNELS.iter().flat_map(|k| k.names()).collect();
        assert!(names.contains(&"score_bf16".to_string()));
        assert!(names.contains(&"attend_combine_f32".to_string()));
        assert!(!names.contains(&"attend_combine_f16".to_string()));
        for n in &names {
            assert!(h.contains(&format!(" X({n})")), "{n}");
            assert_eq!(h.matches(&format!("void {n}(")).count(), 1, "{n}");
        }
        assert!(h.contains(
            "extern \"C\" __global__ void attend_f16(const AttendParams p) { body<__half>(p); }"
        ));
        assert!(h.contains("  const float* qt;\n"));
        assert!(h.contains("  const void* store;\n"));
        assert!(h.contains("  const float* scales;\n"));
        assert!(h.contains(
            "extern \"C\" __global__ void score_i8(const ScoreParams p) { body<int8_t>(p); }"
        ));
        assert!(h.contains("  float* part;\n"));
        assert!(h.contains("  int mode;\n"));
        names.sort();
        names.dedup();
        assert!(names.contains(&"score_mma_i8".to_string()));
        assert!(!names.contains(&"score_mma_f32".to_string()));
        assert_eq!(
            names.len(),
            7 + 2 * STORE_DTYPES.len() + 2 * MMA_STORE_DTYPES.len()
        );
    }

    #[test]
    fn store_variants_are_found_by_dtype_name() {
        assert_eq!(Variant::for_store("F32"), Some(Variant::F32));
        assert_eq!(Variant::for_store("BF16").map(|v| v.suffix), Some("bf16"));
        assert_eq!(Variant::for_store("I8").map(|v| v.c_type), Some("int8_t"));
        assert_eq!(Variant::for_store("I4"), None);
        let mma: Vec<Variant> = STORE_DTYPES
            .iter()
            .map(|&(_, v)| v)
            .filter(|v| v.has_mma())
            .collect();
        assert_eq!(mma, Variants::MmaStoreDtypes.list());
        assert_eq!(
            mma.iter().map(|v| v.suffix).collect::<Vec<_>>(),
            ["f16", "i8"]
        );
    }
}
