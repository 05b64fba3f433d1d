import CLinuxKVM
import Glibc
import Synchronization
import SystemPackage

/// Which implementation of the kernel side of KVM serves a `Hypervisor`.
public enum Accelerator: String, CaseIterable, Sendable, CustomStringConvertible {
    /// The host kernel's `/dev/kvm`.
    case host
    /// SoftKVM: the kernel side of KVM in Swift, with a software x86-64 CPU.
    case soft
    /// The host where its /dev/kvm is usable, otherwise soft.
    case automatic = "auto"

    public var description: String { rawValue }
}

/// The boundary between the Swift API and an implementation of the kernel
/// side of KVM. Both accelerators speak the KVM ABI across it: request
/// numbers and `struct kvm_*` bytes from `<linux/kvm.h>`, and kernel-style
/// results (a non-negative value, or a negated errno).
public protocol KVMBackend: AnyObject, Sendable {
    /// The accelerator this backend is.
    var accelerator: Accelerator { get }
    /// Opens the system object (`open("/dev/kvm")`): a descriptor, or -errno.
    func openSystem() -> Int32
    /// An ioctl with a pointer argument: the result, or -errno.
    func ioctl(_ descriptor: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> Int32
    /// An ioctl with an integer argument: the result, or -errno.
    func ioctl(_ descriptor: Int32, _ request: UInt, value: UInt) -> Int32
    /// Maps `size` bytes of a vCPU descriptor: the `kvm_run` page and the pages after it.
    func mapVCPU(_ descriptor: Int32, size: Int) -> Result<UnsafeMutableRawPointer, Errno>
    /// Undoes `mapVCPU`.
    func unmapVCPU(_ address: UnsafeMutableRawPointer, size: Int)
    /// Closes a descriptor this backend handed out.
    func close(_ descriptor: Int32)
}

/// The host kernel's `/dev/kvm`: each call is the system call.
public final class HostBackend: KVMBackend {
    public static let devicePath = "/dev/kvm"
    public static let shared = HostBackend()

    public var accelerator: Accelerator { .host }

    public func openSystem() -> Int32 {
        let fd = Glibc.open(HostBackend.devicePath, O_RDWR | O_CLOEXEC)
        return fd >= 0 ? fd : -errno
    }

    @inline(__always)
    public func ioctl(_ descriptor: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> Int32 {
        let result = swiftkvm_ioctl_pointer(descriptor, request, argument)
        return result >= 0 ? result : -errno
    }

    @inline(__always)
    public func ioctl(_ descriptor: Int32, _ request: UInt, value: UInt) -> Int32 {
        let result = swiftkvm_ioctl_value(descriptor, request, value)
        return result >= 0 ? result : -errno
    }

    public func mapVCPU(_ descriptor: Int32, size: Int) -> Result<UnsafeMutableRawPointer, Errno> {
        let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0)
        guard let address, address != MAP_FAILED else { return .failure(Errno(rawValue: errno)) }
        return .success(address)
    }

    public func unmapVCPU(_ address: UnsafeMutableRawPointer, size: Int) {
        munmap(address, size)
    }

    public func close(_ descriptor: Int32) {
        _ = Glibc.close(descriptor)
    }
}

/// A descriptor one backend handed out, closed exactly once when the last
/// reference goes, with the calls that turn a kernel-style result into a
/// `KVMError`.
final class KVMHandle: Sendable {
    let descriptor: Int32
    let backend: any KVMBackend
    private let isClosed = Atomic(false)

    init(descriptor: Int32, backend: any KVMBackend) {
        self.descriptor = descriptor
        self.backend = backend
    }

    /// Closes the descriptor now rather than at the last release, for an
    /// owner that must release what the kernel object uses only after it is
    /// gone. Later calls, and the deinit, do nothing.
    func close() {
        if !isClosed.exchange(true, ordering: .acquiringAndReleasing) {
            backend.close(descriptor)
        }
    }

    deinit { close() }

    /// Makes `request` with a pointer argument; throws the errno it gives.
    @inline(__always) @discardableResult
    func call(_ request: KVMRequest, _ argument: UnsafeMutableRawPointer?, context: @autoclosure () -> String? = nil) throws(KVMError) -> Int32 {
        let result = backend.ioctl(descriptor, request.number, argument)
        guard result >= 0 else { throw KVMError(errno: Errno(rawValue: -result), request: request, context: context()) }
        return result
    }

    /// Makes `request` with an integer argument; throws the errno it gives.
    @inline(__always) @discardableResult
    func call(_ request: KVMRequest, value: UInt, context: @autoclosure () -> String? = nil) throws(KVMError) -> Int32 {
        let result = backend.ioctl(descriptor, request.number, value: value)
        guard result >= 0 else { throw KVMError(errno: Errno(rawValue: -result), request: request, context: context()) }
        return result
    }

    /// Makes `request` with a pointer to `value`, which the kernel may read and write.
    @inline(__always) @discardableResult
    func call<T>(_ request: KVMRequest, _ value: inout T, context: @autoclosure () -> String? = nil) throws(KVMError) -> Int32 {
        let result = withUnsafeMutablePointer(to: &value) { backend.ioctl(descriptor, request.number, UnsafeMutableRawPointer($0)) }
        guard result >= 0 else { throw KVMError(errno: Errno(rawValue: -result), request: request, context: context()) }
        return result
    }

    /// Makes `request` with a fresh `T` for the kernel to fill, and returns it.
    @inline(__always)
    func get<T>(_ request: KVMRequest, _ type: T.Type) throws(KVMError) -> T {
        let storage = UnsafeMutablePointer<T>.allocate(capacity: 1)
        defer { storage.deallocate() }
        UnsafeMutableRawPointer(storage).initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<T>.size)
        try call(request, UnsafeMutableRawPointer(storage))
        return storage.pointee
    }
}

/// A zeroed buffer for a `struct kvm_*` that ends in a flexible array
/// (`kvm_msrs`, `kvm_cpuid2`, `kvm_irq_routing`...): a header of type
/// `Header` and room for `capacity` entries of type `Entry` after it.
struct FlexibleArrayBuffer<Header, Entry>: ~Copyable {
    let raw: UnsafeMutableRawPointer
    let capacity: Int

    /// The offset of the first entry: the header's size, which in these
    /// kernel structs is also the offset of the flexible array.
    static var entriesOffset: Int { MemoryLayout<Header>.size }

    init(capacity: Int) {
        self.capacity = capacity
        let size = Self.entriesOffset + capacity * MemoryLayout<Entry>.stride
        raw = UnsafeMutableRawPointer.allocate(byteCount: max(size, 1), alignment: 16)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
    }

    deinit { raw.deallocate() }

    var header: UnsafeMutablePointer<Header> { raw.assumingMemoryBound(to: Header.self) }
    var entries: UnsafeMutablePointer<Entry> { (raw + Self.entriesOffset).assumingMemoryBound(to: Entry.self) }
}
