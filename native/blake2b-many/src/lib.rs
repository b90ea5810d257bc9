//! One C function for native/tasks.c: keyed BLAKE2b of `count` inputs, hashed side by side by
//! blake2b_simd's `hash_many` (AVX2 where the CPU has it, four inputs per pass; one at a time
//! otherwise). The output is BLAKE2b's, byte for byte: the helper checks it against OpenSSL's
//! before using it, and the JavaScript side compares a sample batch with libsodium's.

use blake2b_simd::many::{hash_many, HashManyJob};
use blake2b_simd::Params;
use std::alloc::{dealloc, Layout};
use std::ptr;
use std::slice;
use std::sync::atomic::{compiler_fence, Ordering};

/// Overwrites `count` values of type T at `at` with zeros and frees them, without reading them
/// as T again (a zeroed T need not be a valid one).
unsafe fn wipe_and_free<T>(at: *mut T, count: usize) {
    if count == 0 {
        return;
    }
    ptr::write_bytes(at as *mut u8, 0, count * std::mem::size_of::<T>());
    compiler_fence(Ordering::SeqCst);
    dealloc(at as *mut u8, Layout::array::<T>(count).expect("layout of an allocation made before"));
}

/// Writes keyed BLAKE2b (`out_len` bytes, key of `key_len` bytes) of input i, `lengths[i]` bytes
/// at `inputs[i]`, to `outs + i * out_len`. 0 on success, -1 for arguments BLAKE2b does not take
/// (key over 64 bytes, output not 1 to 64 bytes, a missing array). The parameter block (which
/// holds the key) and the hash states are zeroed before they are freed.
///
/// # Safety
/// The pointers must be valid for the lengths given; the inputs may overlap, the outputs not.
#[no_mangle]
pub unsafe extern "C" fn vmvault_blake2b_many(
    key: *const u8,
    key_len: usize,
    out_len: usize,
    count: usize,
    inputs: *const *const u8,
    lengths: *const usize,
    outs: *mut u8,
) -> i32 {
    if key_len > 64 || (key_len > 0 && key.is_null()) || out_len == 0 || out_len > 64 {
        return -1;
    }
    if count == 0 {
        return 0;
    }
    if inputs.is_null() || lengths.is_null() || outs.is_null() {
        return -1;
    }
    let mut params = Box::new(Params::new());
    params.hash_length(out_len);
    if key_len > 0 {
        params.key(slice::from_raw_parts(key, key_len));
    }
    let ins = slice::from_raw_parts(inputs, count);
    let lens = slice::from_raw_parts(lengths, count);
    let mut jobs: Vec<HashManyJob> = Vec::with_capacity(count);
    for (&p, &n) in ins.iter().zip(lens) {
        let input: &[u8] = if n == 0 { &[] } else { slice::from_raw_parts(p, n) };
        jobs.push(HashManyJob::new(&params, input));
    }
    hash_many(jobs.iter_mut());
    let out = slice::from_raw_parts_mut(outs, count * out_len);
    for (i, job) in jobs.iter().enumerate() {
        out[i * out_len..(i + 1) * out_len].copy_from_slice(job.to_hash().as_bytes());
    }
    // Neither holds anything that needs dropping: both are wiped and freed as plain memory.
    let capacity = jobs.capacity();
    let job_memory = jobs.as_mut_ptr();
    std::mem::forget(jobs);
    wipe_and_free(job_memory, capacity);
    wipe_and_free(Box::into_raw(params), 1);
    0
}
