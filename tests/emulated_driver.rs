//! The fake CUDA driver of `tests/kernel_emu/fake_driver.cpp` is asynchronous, as a GPU
//! is: launches and copies run on a stream worker thread, so a test launcher that
//! forgets the stream's synchronisation before reading its results, or frees a buffer
//! that a queued launch still uses, is caught — and was not by the old synchronous
//! driver (`qf_emu_driver_set_synchronous(1)`), shown here too.
//!
//! One test function: the driver's mode is process-wide.

mod kernel_emu;

use std::ffi::{c_void, CString};

use kernel_emu::emulator;

type CuResult = i32;
type Ptr = u64;
const CUDA_ERROR_LAUNCH_FAILED: CuResult = 719;

/// The fake driver's entry points used here, looked up in the emulator library.
struct Driver {
    get_function: unsafe extern "C" fn(*mut *mut c_void, *mut c_void, *const i8) -> CuResult,
    alloc: unsafe extern "C" fn(*mut Ptr, usize) -> CuResult,
    free: unsafe extern "C" fn(Ptr) -> CuResult,
    launch: unsafe extern "C" fn(
        *mut c_void,
        u32,
        u32,
        u32,
        u32,
        u32,
        u32,
        u32,
        *mut c_void,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    dtoh_async: unsafe extern "C" fn(*mut c_void, Ptr, usize, *mut c_void) -> CuResult,
    alloc_host: unsafe extern "C" fn(*mut *mut c_void, usize) -> CuResult,
    free_host: unsafe extern "C" fn(*mut c_void) -> CuResult,
    sync: unsafe extern "C" fn(*mut c_void) -> CuResult,
    set_synchronous: unsafe extern "C" fn(i32),
    take_report: unsafe extern "C" fn(*mut i8, usize) -> usize,
    iota: *mut c_void,
}

impl Driver {
    fn new(emu: &kernel_emu::Emulator) -> Driver {
        let sym = |n: &str| emu.symbol(n).unwrap_or_else(|| panic!("the fake driver has no {n}"));
        unsafe {
            let mut d = Driver {
                get_function: std::mem::transmute(sym("cuModuleGetFunction")),
                alloc: std::mem::transmute(sym("cuMemAlloc_v2")),
                free: std::mem::transmute(sym("cuMemFree_v2")),
                launch: std::mem::transmute(sym("cuLaunchKernel")),
                dtoh_async: std::mem::transmute(sym("cuMemcpyDtoHAsync_v2")),
                alloc_host: std::mem::transmute(sym("cuMemAllocHost_v2")),
                free_host: std::mem::transmute(sym("cuMemFreeHost")),
                sync: std::mem::transmute(sym("cuStreamSynchronize")),
                set_synchronous: std::mem::transmute(sym("qf_emu_driver_set_synchronous")),
                take_report: std::mem::transmute(sym("qf_emu_driver_take_report")),
                iota: std::ptr::null_mut(),
            };
            let name = CString::new("selftest_iota").unwrap();
            assert_eq!((d.get_function)(&mut d.iota, std::ptr::null_mut(), name.as_ptr()), 0);
            d
        }
    }

    fn alloc(&self, bytes: usize) -> Ptr {
        let mut p = 0;
        assert_eq!(unsafe { (self.alloc)(&mut p, bytes) }, 0);
        p
    }

    /// Queue selftest_iota(out, n).
    fn launch_iota(&self, out: Ptr, n: usize) {
        let (mut out, mut n) = (out, n as i32);
        let mut params = [&mut out as *mut Ptr as *mut c_void, &mut n as *mut i32 as *mut c_void];
        let null = std::ptr::null_mut();
        let r =
            unsafe { (self.launch)(self.iota, 2, 1, 1, 64, 1, 1, 0, null, params.as_mut_ptr(), std::ptr::null_mut()) };
        assert_eq!(r, 0);
    }

    fn sync(&self) -> CuResult {
        unsafe { (self.sync)(std::ptr::null_mut()) }
    }

    fn take_report(&self) -> String {
        let mut buf = vec![0i8; 2048];
        unsafe { (self.take_report)(buf.as_mut_ptr(), buf.len()) };
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
    }

    /// A launcher that queues a kernel and a copy of its result into page-locked host
    /// memory (where cuMemcpyDtoHAsync returns before the copy is done; into pageable
    /// memory CUDA waits for it), then reads the result WITHOUT synchronising the stream
    /// (the bug); returns what it read, and what the host holds after a synchronisation.
    fn launcher_missing_sync(&self, n: usize) -> (Vec<f32>, Vec<f32>) {
        let d = self.alloc(n * 4);
        let mut host: *mut c_void = std::ptr::null_mut();
        assert_eq!(unsafe { (self.alloc_host)(&mut host, n * 4) }, 0);
        self.launch_iota(d, n);
        let r = unsafe { (self.dtoh_async)(host, d, n * 4, std::ptr::null_mut()) };
        assert_eq!(r, 0);
        let view = || unsafe { std::slice::from_raw_parts(host as *const f32, n) }.to_vec();
        // BUG: no cuStreamSynchronize here.
        let read = view();
        assert_eq!(self.sync(), 0);
        let after = view();
        assert_eq!(unsafe { (self.free_host)(host) }, 0);
        assert_eq!(unsafe { (self.free)(d) }, 0);
        (read, after)
    }

    /// A launcher that frees the kernel's output buffer right after queueing the launch
    /// (the bug); returns the result of the next synchronisation and the report.
    fn launcher_frees_too_early(&self, n: usize) -> (CuResult, String) {
        let d = self.alloc(n * 4);
        self.launch_iota(d, n);
        // BUG: the launch may not have run yet.
        assert_eq!(unsafe { (self.free)(d) }, 0);
        let r = self.sync();
        (r, self.take_report())
    }
}

#[test]
fn the_async_driver_catches_a_missing_stream_sync_and_a_buffer_freed_in_use() {
    let Some(emu) = emulator("the_async_driver_catches_a_missing_stream_sync_and_a_buffer_freed_in_use") else {
        return;
    };
    let d = Driver::new(emu);
    let n = 300;
    let want: Vec<f32> = (0..n).map(|i| i as f32).collect();

    // The old, synchronous driver: both bugs pass unnoticed.
    unsafe { (d.set_synchronous)(1) };
    let (read, after) = d.launcher_missing_sync(n);
    assert_eq!(read, want, "the synchronous driver hid the missing synchronisation");
    assert_eq!(after, want);
    let (r, report) = d.launcher_frees_too_early(n);
    assert_eq!((r, report.as_str()), (0, ""), "the synchronous driver hid the early free");

    // The asynchronous driver: the read before the synchronisation sees the poisoned
    // destination (NaN), the synchronised one the result.
    unsafe { (d.set_synchronous)(0) };
    let (read, after) = d.launcher_missing_sync(n);
    assert!(read.iter().all(|v| v.is_nan()), "a read without the stream's synchronisation must not see the result");
    assert_eq!(after, want, "after the synchronisation the result is there");
    eprintln!("missing stream sync: the host read {} NaN of {n} values before synchronising", read.len());

    // Freeing a buffer that a queued launch still uses is reported at the next
    // synchronisation, and the launch does not run.
    let (r, report) = d.launcher_frees_too_early(n);
    assert_eq!(r, CUDA_ERROR_LAUNCH_FAILED, "{report}");
    assert!(report.contains("cuMemFree of a buffer that the launch of `selftest_iota`"), "{report}");
    assert!(report.contains("still uses"), "{report}");
    eprintln!("early free: {report}");
    // The stream is usable afterwards.
    let (_, after) = d.launcher_missing_sync(n);
    assert_eq!(after, want);
}
