//! The CLI's thread set-up: every rayon worker (and the caller) flushes subnormal floats,
//! so that trained models do not fall into x86's slow subnormal path.

use qf_engine::backend::cpu::denormals::flushes_denormals_on_this_thread;

#[test]
fn set_threads_makes_every_worker_flush_denormals() {
    qf_engine::train::device::set_threads(2);
    assert_eq!(rayon::current_num_threads(), 2);
    let on_workers = rayon::broadcast(|_| flushes_denormals_on_this_thread());
    if cfg!(target_arch = "x86_64") {
        assert!(flushes_denormals_on_this_thread(), "the calling thread");
        assert_eq!(on_workers, vec![true, true], "rayon workers");
    } else {
        assert!(on_workers.iter().all(|f| !f), "only x86-64 has the switch");
    }
}
