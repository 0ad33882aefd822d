//! The engine's own guarantees: command batching, buffer pooling and the memory counters,
//! ordering of uploads against pending work, tape recording, no-grad scopes, and freeing.
//! Tests that read counters open their own context so that parallel tests do not disturb them.

mod common;

use apga_gpu::{no_grad, ops, Gpu, GpuOptions, Tape, Tensor};
use common::*;

fn private_gpu() -> Gpu {
    Gpu::new(GpuOptions {
        autotune: false,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("these tests need a GPU adapter: {e}"))
}

#[test]
fn many_dispatches_share_one_submit_until_a_value_is_read() {
    let g = private_gpu();
    let x = Tensor::from_slice(&g, &[1.0; 1000], &[1000]).unwrap();
    g.sync().unwrap();
    let before = g.submit_count();
    let mut y = x.clone();
    for _ in 0..200 {
        y = ops::add_scalar(&y, 1.0).unwrap();
    }
    assert_eq!(
        g.submit_count(),
        before,
        "nothing is submitted before a read"
    );
    let v = y.to_vec().unwrap();
    assert_eq!(
        g.submit_count(),
        before + 1,
        "one submit for 200 dispatches and the read"
    );
    assert!(v.iter().all(|&e| e == 201.0));
}

#[test]
fn pool_reuses_buffers_and_tracks_peak() {
    let g = private_gpu();
    g.sync().unwrap();
    let base = g.memory();
    {
        let a = Tensor::zeros(&g, &[1024]).unwrap();
        let b = Tensor::zeros(&g, &[1024]).unwrap();
        assert_eq!(g.memory().in_use, base.in_use + 8192);
        drop((a, b));
    }
    assert_eq!(g.memory().in_use, base.in_use);
    assert!(g.memory().peak_in_use >= base.in_use + 8192);
    let created = g.memory().created;
    let c = Tensor::zeros(&g, &[1000]).unwrap(); // same size class as 1024 floats
    assert_eq!(g.memory().created, created, "served from the pool");
    assert!(g.memory().reused > base.reused);
    drop(c);
    g.release_cached_memory();
    assert_eq!(g.memory().held, g.memory().in_use);
}

#[test]
fn upload_into_a_recycled_buffer_does_not_overtake_pending_work() {
    // `y = x * 2` is recorded but not submitted; x's buffer returns to the pool and the next
    // upload of the same size reuses it. The upload must land after y was computed.
    let g = private_gpu();
    let x = Tensor::from_slice(&g, &[3.0; 300], &[300]).unwrap();
    let y = ops::mul_scalar(&x, 2.0).unwrap();
    drop(x);
    let z = Tensor::from_slice(&g, &[-1.0; 300], &[300]).unwrap();
    assert!(y.to_vec().unwrap().iter().all(|&v| v == 6.0));
    assert!(z.to_vec().unwrap().iter().all(|&v| v == -1.0));
}

#[test]
fn no_grad_records_nothing() {
    let g = gpu();
    let w = Tensor::from_slice(&g, &[1.0, 2.0], &[2])
        .unwrap()
        .with_grad();
    let tape = Tape::new();
    let y = no_grad(|| ops::mul(&w, &w).unwrap());
    assert_eq!(tape.len(), 0);
    assert!(!y.requires_grad());
    let z = ops::mul(&w, &w).unwrap();
    assert_eq!(tape.len(), 1);
    assert!(z.requires_grad());
    // Without an open tape nothing is recorded either.
    drop(tape);
    assert!(!ops::mul(&w, &w).unwrap().requires_grad());
}

#[test]
fn only_ops_touching_a_grad_tensor_are_recorded() {
    let g = gpu();
    let c = Tensor::from_slice(&g, &[1.0, 2.0], &[2]).unwrap();
    let w = c.with_grad();
    let tape = Tape::new();
    let _k = ops::mul(&c, &c).unwrap();
    assert_eq!(tape.len(), 0, "constants are not recorded");
    let y = ops::mul(&c, &w).unwrap();
    let loss = ops::sum_all(&y).unwrap();
    assert_eq!(tape.len(), 2);
    let grads = tape.backward(&loss).unwrap();
    assert!(grads.get(&c).is_none());
    assert_eq!(grads.get(&w).unwrap().to_vec().unwrap(), vec![1.0, 2.0]);
    assert_eq!(grads.len(), 1, "only leaves are returned");
}

#[test]
fn detach_cuts_the_graph() {
    let g = gpu();
    let w = Tensor::from_slice(&g, &[3.0], &[1]).unwrap().with_grad();
    let tape = Tape::new();
    let y = ops::mul(&w, &w.detach()).unwrap(); // d/dw (w * const) = const = 3
    let grads = tape.backward(&ops::sum_all(&y).unwrap()).unwrap();
    assert_eq!(grads.get(&w).unwrap().to_vec().unwrap(), vec![3.0]);
}

#[test]
fn dropping_a_tape_frees_what_it_held() {
    let g = private_gpu();
    let w = Tensor::from_slice(&g, &vec![0.5; 4096], &[64, 64])
        .unwrap()
        .with_grad();
    g.sync().unwrap();
    let base = g.memory().in_use;
    {
        let tape = Tape::new();
        let mut h = w.clone();
        for _ in 0..5 {
            h = ops::relu(&ops::matmul(&h, &w).unwrap()).unwrap();
        }
        let loss = ops::sum_all(&h).unwrap();
        assert!(tape.len() >= 11);
        assert!(g.memory().in_use > base);
        drop((h, loss));
        assert!(
            g.memory().in_use > base,
            "the tape keeps the activations alive"
        );
        drop(tape);
    }
    assert_eq!(
        g.memory().in_use,
        base,
        "dropping the tape returned every buffer"
    );
}

#[test]
fn backward_frees_activations_and_keeps_only_leaf_grads() {
    let g = private_gpu();
    let w = Tensor::from_slice(&g, &vec![0.01; 4096], &[64, 64])
        .unwrap()
        .with_grad();
    g.sync().unwrap();
    let base = g.memory().in_use;
    let tape = Tape::new();
    let mut h = w.clone();
    for _ in 0..4 {
        h = ops::sigmoid(&ops::matmul(&h, &w).unwrap()).unwrap();
    }
    let loss = ops::mean_all(&h).unwrap();
    drop(h);
    let grads = tape.backward(&loss).unwrap();
    drop(loss);
    assert_eq!(grads.len(), 1);
    assert_eq!(
        g.memory().in_use,
        base + 4096 * 4,
        "only the gradient of w remains"
    );
}

#[test]
fn nested_tapes_record_into_the_innermost() {
    let g = gpu();
    let w = Tensor::from_slice(&g, &[2.0], &[1]).unwrap().with_grad();
    let outer = Tape::new();
    let a = ops::mul_scalar(&w, 3.0).unwrap();
    let inner = Tape::new();
    let b = ops::mul(&a, &a).unwrap();
    assert_eq!((outer.len(), inner.len()), (1, 1));
    // The inner tape sees `a` as a leaf: d(a*a)/da = 2a = 12.
    let gi = inner.backward(&ops::sum_all(&b).unwrap()).unwrap();
    assert_eq!(gi.get(&a).unwrap().to_vec().unwrap(), vec![12.0]);
    let c = ops::mul_scalar(&a, 1.0).unwrap();
    assert_eq!(
        outer.len(),
        2,
        "after the inner tape ends, ops go to the outer one again"
    );
    let go = outer.backward(&ops::sum_all(&c).unwrap()).unwrap();
    assert_eq!(go.get(&w).unwrap().to_vec().unwrap(), vec![3.0]);
}

#[test]
fn backward_rejects_non_scalar_losses_with_an_error() {
    let g = gpu();
    let w = Tensor::from_slice(&g, &[1.0, 2.0], &[2])
        .unwrap()
        .with_grad();
    let tape = Tape::new();
    let y = ops::mul(&w, &w).unwrap();
    let e = tape
        .backward(&y)
        .err()
        .expect("non-scalar loss")
        .to_string();
    assert!(e.contains("one-element"), "{e}");
    let tape = Tape::new();
    let y = ops::mul(&w, &w).unwrap();
    let grad = Tensor::from_slice(&g, &[1.0, 10.0], &[2]).unwrap();
    let grads = tape.backward_with(&y, grad).unwrap();
    assert_eq!(grads.get(&w).unwrap().to_vec().unwrap(), vec![2.0, 40.0]);
}

#[test]
fn grid_splits_large_dispatches_over_two_dimensions() {
    let g = gpu();
    let max = g.limits().max_compute_workgroups_per_dimension as usize;
    assert_eq!(g.grid(10), [10, 1, 1]);
    for n in [max, max + 1, 3 * max + 7] {
        let [x, y, z] = g.grid(n);
        assert!(x as usize <= max && z == 1);
        assert!(x as usize * y as usize >= n, "covers every workgroup");
        assert!(
            (x as usize * y as usize) < n + x as usize,
            "at most one partial row"
        );
    }
}

#[test]
fn runs_on_the_backend_wgpu_backend_asks_for() {
    // CI runs the op tests a second time with WGPU_BACKEND=gl; this proves which back end ran.
    let g = gpu();
    let info = g.info();
    println!(
        "adapter: {} ({:?}, {:?})",
        info.name, info.backend, info.device_type
    );
    if let Ok(b) = std::env::var("WGPU_BACKEND") {
        let want = b.to_lowercase();
        let got = format!("{:?}", info.backend).to_lowercase();
        assert!(
            want.contains(&got) || (want == "gl" && got == "gl"),
            "asked for {b}, got {got}"
        );
    }
}

#[test]
fn a_buffer_beyond_the_binding_limit_is_an_error_value() {
    // One element more than the adapter can bind as storage (128 MiB on lavapipe): the op
    // returns an error naming the limit and what to change instead of a wgpu validation error.
    let g = private_gpu();
    let n = g.max_binding_elems() + 1;
    let x = match Tensor::zeros(&g, &[n]) {
        Ok(x) => x,
        Err(e) => {
            // Only an adapter whose largest buffer is no larger than its largest binding may
            // refuse the allocation itself, and then with the error naming that limit.
            assert!(
                matches!(e, apga_gpu::Error::BufferTooLarge { .. }),
                "allocation failed otherwise: {e}"
            );
            assert!(
                g.limits().max_buffer_size <= g.limits().max_storage_buffer_binding_size * 2,
                "{e}"
            );
            return;
        }
    };
    let e = ops::relu(&x).expect_err("binding too large").to_string();
    assert!(
        e.contains("binds at most") && e.contains("--batch-size"),
        "{e}"
    );
    drop(x);
    g.sync().unwrap();
}

#[test]
fn relu_keeps_only_a_bit_mask_for_backward() {
    // relu's backward needs only the mask x > 0: the tape keeps it as bits (1024 values ->
    // 32 words, a 256-byte buffer), so neither the input (here a temporary, in UNet11 a
    // convolution's output) nor, once dropped, the output stays alive.
    let g = private_gpu();
    let x = Tensor::from_slice(
        &g,
        &(0..1024).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<_>>(),
        &[1024],
    )
    .unwrap()
    .with_grad();
    g.sync().unwrap();
    let base = g.memory().in_use;
    let tape = Tape::new();
    let y = ops::relu(&ops::add_scalar(&x, 0.5).unwrap()).unwrap();
    let loss = ops::sum_all(&y).unwrap();
    drop(y);
    g.sync().unwrap();
    assert_eq!(
        g.memory().in_use - base,
        256 + 256,
        "only the mask (and the scalar loss) may stay alive"
    );
    let gx = tape.backward(&loss).unwrap();
    let want: Vec<f32> = (0..1024)
        .map(|i| {
            if (i % 7) as f32 - 3.0 + 0.5 > 0.0 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    assert_eq!(gx.get(&x).unwrap().to_vec().unwrap(), want);
}

#[test]
fn a_context_is_freed_once_its_last_handle_goes() {
    // A convolution without bias reads the context's shared zeros; the context keeps that
    // buffer bare, so once every tensor is gone only the caller's handle is left (a cached
    // storage holding the context would keep every compare job's device alive).
    let g = private_gpu();
    {
        let x = Tensor::from_slice(&g, &[1.0; 2 * 3 * 4 * 4], &[2, 3, 4, 4]).unwrap();
        let w = Tensor::from_slice(&g, &[0.5; 5 * 3], &[5, 3, 1, 1]).unwrap();
        let y = ops::conv2d(&x, &w, None, 1, 0).unwrap();
        assert!(y.to_vec().unwrap().iter().all(|&v| v == 1.5));
    }
    g.sync().unwrap();
    assert_eq!(g.handle_count(), 1, "something still holds the context");
}
