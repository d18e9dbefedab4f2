//! The block-quantized CPU kernels alone (`cargo bench --bench kernels`): matrix-vector products
//! (decode), 128-row products (prefill) and, on CPUs with a bf16 unit, the training passes' 512-row
//! products, on the SmolLM2-135M shapes, per instruction set and
//! thread count, with weights from the real GGUF file. Throughput is in weights per second
//! (criterion "elements"; ×2 for FLOP/s).

mod common;

use std::time::Duration;

use agentlm::engine::kernels::{dense_products, matmul, matmul_with, Isa, QActs, QMatrix};
use agentlm::formats::gguf::GgufFile;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn load(file: &GgufFile, name: &str) -> QMatrix {
    let (info, bytes) = file.tensor_bytes(name).unwrap();
    let shape = info.shape();
    QMatrix::from_ggml(info.ggml_type, bytes, shape[0], shape[1]).unwrap()
}

fn bench(c: &mut Criterion) {
    let path = common::model_path();
    assert!(path.is_file(), "{} not found: run scripts/fetch-model.sh", path.display());
    let file = GgufFile::open(&path).unwrap();
    let up = load(&file, "blk.0.ffn_up.weight"); // Q4_1 1536 x 576
    let down = load(&file, "blk.0.ffn_down.weight"); // Q4_1 576 x 1536
    let embed = load(&file, "token_embd.weight"); // Q8_0 49152 x 576 (the tied LM head)
    let mut g = c.benchmark_group("kernels");
    g.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for isa in Isa::available() {
            for (label, w, rows) in [("q4_1_up_matvec", &up, 1), ("q4_1_down_matvec", &down, 1), ("q8_0_head_matvec", &embed, 1), ("q4_1_up_128rows", &up, 128)]
            {
                if isa == Isa::Scalar && rows > 1 {
                    continue;
                }
                let x: Vec<f32> = (0..rows * w.cols()).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
                let mut acts = QActs::default();
                acts.quantize(&x, rows, w.cols());
                let mut out = vec![0f32; rows * w.rows()];
                g.throughput(Throughput::Elements((rows * w.rows() * w.cols()) as u64));
                g.bench_function(format!("{label}/{}/{threads}t", isa.name()), |b| {
                    b.iter(|| pool.install(|| matmul_with(isa, &[w], &x, &acts, rows, &mut out)))
                });
            }
        }
    }
    // The training passes' products (512 rows) on the bf16 unit where the CPU has one: AMX tiles,
    // or AVX512-BF16 vectors with `AGENTLM_AMX=0`; the forward and the backward (transposed) shapes.
    if dense_products() {
        let down_t = QMatrix::transposed(&[&up]);
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for (label, w) in [("q4_1_up_512rows_bf16", &up), ("q4_1_down_512rows_bf16", &down), ("u8_up_transposed_512rows_bf16", &down_t)] {
                let rows = 512;
                let x: Vec<f32> = (0..rows * w.cols()).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
                let mut acts = QActs::default();
                acts.prepare(&x, rows, w.cols());
                let mut out = vec![0f32; rows * w.rows()];
                g.throughput(Throughput::Elements((rows * w.rows() * w.cols()) as u64));
                g.bench_function(format!("{label}/{threads}t"), |b| b.iter(|| pool.install(|| matmul(&[w], &x, &acts, rows, &mut out))));
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
