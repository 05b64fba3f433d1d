import CLinuxKVM
import Glibc
import KVM
import Synchronization
import SystemPackage

/// SoftKVM: the kernel side of KVM in Swift, behind the same ABI as the
/// host's /dev/kvm (request numbers, `struct kvm_*` bytes, -errno results).
///
/// Every object it hands out is a real descriptor of this process (an
/// eventfd for the system and VM objects, a memfd holding the `kvm_run`
/// mapping for a vCPU), so descriptor numbers never collide with the
/// process's other files and `mmap` of a vCPU descriptor works as on the host.
/// The objects are found by descriptor in a table, as the kernel finds them
/// through `struct file`.
public final class SoftBackend: KVMBackend {
    public var accelerator: Accelerator { .soft }

    /// What a descriptor refers to: the kernel's `file->private_data`.
    enum Object {
        case system
        case vm(SoftVM)
        case vcpu(SoftVCPU)
        case device(SoftDevice)
    }

    private let files = Mutex<[Int32: Object]>([:])

    /// The process a request comes from. The kernel compares `kvm->mm` with
    /// `current->mm`; a test can make this change to see that rule.
    let currentProcess: @Sendable () -> pid_t

    public convenience init() {
        self.init(currentProcess: { getpid() })
    }

    init(currentProcess: @escaping @Sendable () -> pid_t) {
        self.currentProcess = currentProcess
    }

    public func openSystem() -> Int32 {
        let descriptor = eventfd(0, Int32(EFD_CLOEXEC))
        guard descriptor >= 0 else { return -errno }
        install(descriptor, .system)
        return descriptor
    }

    public func ioctl(_ descriptor: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> Int32 {
        dispatch(descriptor, request, UInt(bitPattern: argument))
    }

    public func ioctl(_ descriptor: Int32, _ request: UInt, value: UInt) -> Int32 {
        dispatch(descriptor, request, value)
    }

    /// The kernel's `vfs_ioctl`: the file's own `unlocked_ioctl`. The
    /// argument is an integer or a user pointer, as the request says.
    private func dispatch(_ descriptor: Int32, _ request: UInt, _ argument: UInt) -> Int32 {
        guard let object = lookup(descriptor) else {
            // A descriptor of another kind gets ENOTTY from the kernel; one that is not open, EBADF.
            return fcntl(descriptor, F_GETFD) < 0 ? -Errno.badFileDescriptor.rawValue : -Errno.inappropriateIOCTLForDevice.rawValue
        }
        switch object {
        case .system: return kvm_dev_ioctl(request, argument)
        case .vm(let vm): return kvm_vm_ioctl(vm, request, argument)
        case .vcpu(let vcpu): return kvm_vcpu_ioctl(vcpu, request, argument)
        case .device(let device): return kvm_device_ioctl(device, request, argument)
        }
    }

    public func mapVCPU(_ descriptor: Int32, size: Int) -> Result<UnsafeMutableRawPointer, Errno> {
        guard case .vcpu(let vcpu) = lookup(descriptor) else { return .failure(.noSuchAddressOrDevice) }
        // The vCPU descriptor is the memfd that holds the run page, so this
        // mapping shares it with SoftKVM's own, as the kernel's vcpu fault handler shares its pages.
        let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0)
        guard let address, address != MAP_FAILED else { return .failure(Errno(rawValue: errno)) }
        // The ring page is the VM's, shared by all its vCPUs.
        guard vcpu.vm.coalesced.mapInto(address, size: size) else {
            let error = errno
            munmap(address, size)
            return .failure(Errno(rawValue: error))
        }
        return .success(address)
    }

    public func unmapVCPU(_ address: UnsafeMutableRawPointer, size: Int) {
        munmap(address, size)
    }

    /// The kernel's release of the file: the object loses the descriptor's
    /// reference; a VM lives on while a vCPU holds it (kvm_put_kvm).
    public func close(_ descriptor: Int32) {
        let removed = forgetting(descriptor)
        if removed != nil { _ = Glibc.close(descriptor) }
    }

    /// Drops the descriptor's reference; a device whose last descriptor this
    /// was is released, as the kernel's file release does.
    private func forgetting(_ descriptor: Int32) -> Object? {
        let (removed, lastOfDevice) = files.withLock { files -> (Object?, SoftDevice?) in
            let removed = files.removeValue(forKey: descriptor)
            guard case .device(let device) = removed else { return (removed, nil) }
            let stillOpen = files.values.contains { if case .device(let other) = $0 { other === device } else { false } }
            return (removed, stillOpen ? nil : device)
        }
        if let lastOfDevice { kvm_device_release(lastOfDevice) }
        return removed
    }

    /// Whether `descriptor` is one this backend handed out (or a duplicate of one).
    public func owns(_ descriptor: Int32) -> Bool {
        lookup(descriptor) != nil
    }

    /// `copy` now refers to the object of `original`, as a descriptor made by
    /// dup refers to the same `struct file`; the object lives while either does.
    public func duplicate(_ original: Int32, as copy: Int32) {
        files.withLock { files in
            if let object = files[original] { files[copy] = object }
        }
    }

    /// The descriptor was closed by someone else (dup2 onto it): its
    /// reference goes without closing the number, which is reused already.
    public func forget(_ descriptor: Int32) {
        _ = forgetting(descriptor)
    }

    /// mmap of a descriptor this backend handed out. A vCPU's maps its
    /// memfd, the run page first, with the VM's coalesced ring at its page;
    /// the system and VM objects have no mmap (ENODEV, as the kernel's files).
    public func map(
        _ descriptor: Int32, address: UnsafeMutableRawPointer?, length: Int, protection: Int32, flags: Int32, offset: Int
    ) -> Result<UnsafeMutableRawPointer, Errno> {
        guard case .vcpu(let vcpu) = lookup(descriptor) else { return .failure(.operationNotSupportedByDevice) }
        let mapped = mmap(address, length, protection, flags, descriptor, off_t(offset))
        guard let mapped, mapped != MAP_FAILED else { return .failure(Errno(rawValue: errno)) }
        guard vcpu.vm.coalesced.mapInto(mapped, size: length, offset: offset, protection: protection, flags: flags) else {
            let error = errno
            munmap(mapped, length)
            return .failure(Errno(rawValue: error))
        }
        return .success(mapped)
    }

    func lookup(_ descriptor: Int32) -> Object? {
        files.withLock { $0[descriptor] }
    }

    func install(_ descriptor: Int32, _ object: Object) {
        files.withLock { $0[descriptor] = object }
    }

    /// A fresh eventfd for a new object: a descriptor number the process owns.
    static func anonymousDescriptor() -> Int32 {
        let descriptor = eventfd(0, Int32(EFD_CLOEXEC))
        return descriptor >= 0 ? descriptor : -errno
    }
}

/// The kernel's copy_from_user and copy_to_user for the user memory a
/// request points at: a pointer that is null, unmapped or (for a write)
/// read-only gives EFAULT, never a crash. The copy is a
/// process_vm_readv/process_vm_writev on this process, which the kernel
/// checks page by page as it checks a user copy. It is done here, where
/// every request reads or writes user memory, so that the Swift API, the
/// preload library and each flexible array (MSRs, CPUID, routes, the dirty
/// bitmap) are all covered; the size copied is the request's struct, the
/// size its ioctl number encodes (_IOC_SIZE).
enum UserMemory {
    static func read<T>(_ type: T.Type, from address: UInt) -> T? {
        guard address != 0 else { return nil }
        let value = UnsafeMutablePointer<T>.allocate(capacity: 1)
        defer { value.deallocate() }
        guard copyIn(UnsafeMutableRawPointer(value), from: address, count: MemoryLayout<T>.size) else { return nil }
        return UnsafeRawPointer(value).loadUnaligned(as: T.self)
    }

    static func write<T>(_ value: T, to address: UInt) -> Bool {
        withUnsafeBytes(of: value) { copyOut($0, to: address) }
    }

    /// copy_to_user of `bytes` at `address`.
    static func copyOut(_ bytes: UnsafeRawBufferPointer, to address: UInt) -> Bool {
        guard address != 0 else { return false }
        guard let base = bytes.baseAddress, bytes.count > 0 else { return true }
        return swiftkvm_copy_to_user(address, base, bytes.count) == 0
    }

    /// copy_from_user of `count` bytes at `address` into `destination`.
    static func copyIn(_ destination: UnsafeMutableRawPointer, from address: UInt, count: Int) -> Bool {
        guard count > 0 else { return true }
        return swiftkvm_copy_from_user(destination, address, count) == 0
    }
}

@inline(__always) func fail(_ errno: Errno) -> Int32 { -errno.rawValue }
