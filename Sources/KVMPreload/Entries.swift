import Glibc
import SoftKVM

// The Swift side of the preload library: the C-callable entries the
// interposer (CKVMPreload/interpose.c) calls for KVM descriptors, each
// forwarding to one process-wide SoftBackend. The interposer calls them
// with its thread-local guard set, so the libc calls SoftKVM makes from here
// reach libc directly. Results are kernel-style: a value, or -errno.

/// The process's SoftKVM, the one kernel behind every /dev/kvm it opens.
let backend = SoftBackend()

@_cdecl("swiftkvm_preload_open")
public func swiftkvm_preload_open(_ flags: Int32) -> Int32 {
    backend.openSystem()
}

@_cdecl("swiftkvm_preload_ioctl")
public func swiftkvm_preload_ioctl(_ descriptor: Int32, _ request: UInt, _ argument: UInt) -> Int32 {
    // The argument is a word: SoftKVM reads it as an integer or copies
    // through it as a user pointer, as each request says.
    backend.ioctl(descriptor, request, value: argument)
}

@_cdecl("swiftkvm_preload_mmap")
public func swiftkvm_preload_mmap(
    _ address: UnsafeMutableRawPointer?, _ length: Int, _ protection: Int32, _ flags: Int32, _ descriptor: Int32,
    _ offset: Int, _ error: UnsafeMutablePointer<Int32>
) -> UnsafeMutableRawPointer? {
    switch backend.map(descriptor, address: address, length: length, protection: protection, flags: flags, offset: offset) {
    case .success(let mapped):
        return mapped
    case .failure(let errno):
        error.pointee = errno.rawValue
        return nil
    }
}

@_cdecl("swiftkvm_preload_close")
public func swiftkvm_preload_close(_ descriptor: Int32) -> Int32 {
    // The interposer's table and SoftKVM's agree; should they not, the
    // descriptor is still closed, as the program asked.
    guard backend.owns(descriptor) else { return Glibc.close(descriptor) == 0 ? 0 : -errno }
    backend.close(descriptor)
    return 0
}

@_cdecl("swiftkvm_preload_duplicate")
public func swiftkvm_preload_duplicate(_ original: Int32, _ copy: Int32) {
    backend.duplicate(original, as: copy)
}

@_cdecl("swiftkvm_preload_forget")
public func swiftkvm_preload_forget(_ descriptor: Int32) {
    backend.forget(descriptor)
}

@_cdecl("swiftkvm_preload_owns")
public func swiftkvm_preload_owns(_ descriptor: Int32) -> Int32 {
    backend.owns(descriptor) ? 1 : 0
}
