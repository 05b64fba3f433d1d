import CLinuxKVM
import Glibc
import KVM
import Synchronization
import SystemPackage

// irqfd and ioeventfd on real eventfds, after the kernel's virt/kvm/eventfd.c.
//
// The kernel holds the eventfd's context; SoftKVM holds a duplicate of the
// descriptor, so a registration lives on when the caller closes its own
// (the kernel drops an irqfd on the eventfd's last close instead). Two
// registrations name the same eventfd when their descriptor numbers are
// equal: the kernel compares the eventfd itself, which user space cannot.

/// Whether `descriptor` is an open eventfd (eventfd_ctx_fdget): EBADF when
/// not open, EINVAL when it is another kind of file, else 0.
func checkEventFD(_ descriptor: Int32) -> Int32 {
    if descriptor < 0 || fcntl(descriptor, F_GETFD) < 0 { return fail(.badFileDescriptor) }
    var buffer = [CChar](repeating: 0, count: 64)
    let count = readlink("/proc/self/fd/\(descriptor)", &buffer, buffer.count - 1)
    guard count > 0 else { return fail(.invalidArgument) }
    let target = String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return target == "anon_inode:[eventfd]" ? 0 : fail(.invalidArgument)
}

/// The VM's irqfds (`kvm->irqfds`) and the thread that turns their signals
/// into interrupts: one per VM, started with the first irqfd and stopped
/// when the VM goes.
final class IRQFDs: Sendable {
    struct Binding: Sendable {
        /// The caller's descriptor number, the registration's identity.
        let userDescriptor: Int32
        /// SoftKVM's duplicate, which the thread polls.
        let descriptor: Int32
        let gsi: UInt32
        /// SoftKVM's duplicate of the resample eventfd.
        let resample: Int32?
    }

    private let bindings = Mutex<[Binding]>([])
    /// Wakes the thread when the set changes or the VM goes.
    private let control: Int32
    private let stopping = Atomic<Bool>(false)
    private let thread = Mutex<pthread_t?>(nil)
    let irqchip: SoftIrqchip

    init?(irqchip: SoftIrqchip) {
        control = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        if control < 0 { return nil }
        self.irqchip = irqchip
    }

    deinit {
        for binding in bindings.withLock({ $0 }) {
            _ = Glibc.close(binding.descriptor)
            if let resample = binding.resample { _ = Glibc.close(resample) }
        }
        _ = Glibc.close(control)
    }

    /// kvm_irqfd_assign, after the irqchip check.
    func assign(_ args: kvm_irqfd) -> Int32 {
        let fd = Int32(bitPattern: args.fd)
        var r = checkEventFD(fd)
        if r != 0 { return r }
        let wantsResample = args.flags & UInt32(KVM_IRQFD_FLAG_RESAMPLE) != 0
        if wantsResample {
            r = checkEventFD(Int32(bitPattern: args.resamplefd))
            if r != 0 { return r }
        }
        r = bindings.withLock { bindings in
            // One eventfd raises one GSI.
            if bindings.contains(where: { $0.userDescriptor == fd }) { return fail(.resourceBusy) }
            let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
            guard copy >= 0 else { return -errno }
            var resample: Int32?
            if wantsResample {
                let resampleCopy = fcntl(Int32(bitPattern: args.resamplefd), F_DUPFD_CLOEXEC, 0)
                guard resampleCopy >= 0 else {
                    _ = Glibc.close(copy)
                    return -errno
                }
                resample = resampleCopy
                irqchip.core.withLock { $0.resamplers[args.gsi, default: []].append(resampleCopy) }
            }
            bindings.append(Binding(userDescriptor: fd, descriptor: copy, gsi: args.gsi, resample: resample))
            return 0
        }
        if r == 0 {
            startThreadIfNeeded()
            signalEventFD(control)
        }
        return r
    }

    /// kvm_irqfd_deassign: every registration of the eventfd on the GSI
    /// goes; none is not an error.
    func deassign(_ args: kvm_irqfd) -> Int32 {
        let fd = Int32(bitPattern: args.fd)
        let r = checkEventFD(fd)
        if r != 0 { return r }
        let removed = bindings.withLock { bindings in
            let gone = bindings.filter { $0.userDescriptor == fd && $0.gsi == args.gsi }
            bindings.removeAll { $0.userDescriptor == fd && $0.gsi == args.gsi }
            return gone
        }
        guard !removed.isEmpty else { return 0 }
        // The thread must not be polling a descriptor about to close: it
        // takes the new set before the wait below returns.
        quiesce()
        for binding in removed {
            if let resample = binding.resample {
                irqchip.core.withLock { core in
                    core.resamplers[binding.gsi]?.removeAll { $0 == resample }
                    // irqfd_resampler_shutdown: the last one lowers its line.
                    if core.resamplers[binding.gsi]?.isEmpty ?? false {
                        core.resamplers[binding.gsi] = nil
                        _ = core.setIRQ(source: KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID, gsi: binding.gsi, level: false,
                                        lineStatus: false, bus: irqchip.bus)
                    }
                }
                _ = Glibc.close(resample)
            }
            _ = Glibc.close(binding.descriptor)
        }
        return 0
    }

    /// Waits until the thread has rebuilt its poll set (flush_workqueue).
    private let generation = Atomic<UInt64>(0)
    private func quiesce() {
        guard thread.withLock({ $0 != nil }) else { return }
        let seen = generation.load(ordering: .acquiring)
        signalEventFD(control)
        while generation.load(ordering: .acquiring) == seen && !stopping.load(ordering: .relaxed) { usleep(100) }
    }

    /// irqfd_inject: an edge, or for a resampled irqfd a level held until the guest's EOI.
    func inject(_ binding: Binding) {
        if binding.resample != nil {
            _ = irqchip.setIRQ(source: KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID, gsi: binding.gsi, level: true)
        } else {
            _ = irqchip.setIRQ(source: KVM_USERSPACE_IRQ_SOURCE_ID, gsi: binding.gsi, level: true)
            _ = irqchip.setIRQ(source: KVM_USERSPACE_IRQ_SOURCE_ID, gsi: binding.gsi, level: false)
        }
    }

    private func startThreadIfNeeded() {
        thread.withLock { thread in
            guard thread == nil else { return }
            let context = Unmanaged.passRetained(self).toOpaque()
            var handle = pthread_t()
            let r = pthread_create(&handle, nil, { context in
                guard let context else { return nil }
                let irqfds = Unmanaged<IRQFDs>.fromOpaque(context).takeRetainedValue()
                irqfds.run()
                return nil
            }, context)
            if r == 0 { thread = handle } else { Unmanaged<IRQFDs>.fromOpaque(context).release() }
        }
    }

    /// The thread's loop: poll the control eventfd and every irqfd, inject
    /// for each signalled one.
    private func run() {
        while !stopping.load(ordering: .acquiring) {
            let current = bindings.withLock { $0 }
            generation.add(1, ordering: .releasing)
            var fds = [pollfd(fd: control, events: Int16(POLLIN), revents: 0)]
            fds += current.map { pollfd(fd: $0.descriptor, events: Int16(POLLIN), revents: 0) }
            let ready = poll(&fds, nfds_t(fds.count), -1)
            if ready < 0 { continue }
            if fds[0].revents != 0 { drain(control) }
            for (index, binding) in current.enumerated() where fds[index + 1].revents & Int16(POLLIN) != 0 {
                // eventfd_ctx_do_read: the counter is consumed, however many signals it holds.
                if drain(binding.descriptor) { inject(binding) }
            }
        }
    }

    /// Reads an eventfd's counter if it is non-zero, without blocking.
    @discardableResult
    private func drain(_ descriptor: Int32) -> Bool {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, 0) == 1 else { return false }
        var value: UInt64 = 0
        return withUnsafeMutableBytes(of: &value) { Glibc.read(descriptor, $0.baseAddress, 8) } == 8
    }

    /// Ends the thread; the VM calls this as it goes.
    func stop() {
        stopping.store(true, ordering: .releasing)
        signalEventFD(control)
        if let handle = thread.withLock({ $0 }) { pthread_join(handle, nil) }
    }
}

// MARK: ioeventfd

/// The buses an ioeventfd sits on (`enum kvm_bus`).
enum IOBus: Sendable {
    case mmio, pio, virtioCCWNotify, fastMMIO
}

/// One ioeventfd (`struct _ioeventfd`).
struct IOEventFD: Sendable {
    let bus: IOBus
    let address: UInt64
    /// 0 matches a write of any length.
    let length: UInt32
    /// SoftKVM's duplicate of the eventfd.
    let descriptor: Int32
    let userDescriptor: Int32
    /// nil for a wildcard.
    let datamatch: UInt64?

    /// ioeventfd_in_range: a write to exactly this address, of this length, of this value.
    func matches(address: UInt64, length: Int, value: UInt64) -> Bool {
        if address != self.address { return false }
        if self.length == 0 { return true }
        if length != Int(self.length) { return false }
        guard let datamatch else { return true }
        let mask: UInt64 = length >= 8 ? ~0 : (1 << (UInt64(length) * 8)) - 1
        return value & mask == datamatch
    }
}

/// KVM_IOEVENTFD_VALID_FLAG_MASK: datamatch, pio, deassign, virtio-ccw
/// notify and fast MMIO, the last of which selects nothing on x86.
let KVM_IOEVENTFD_VALID_FLAG_MASK: UInt32 = (1 << UInt32(kvm_ioeventfd_flag_nr_max)) - 1
let KVM_IOEVENTFD_FLAG_DATAMATCH: UInt32 = 1 << 0
let KVM_IOEVENTFD_FLAG_PIO: UInt32 = 1 << 1
let KVM_IOEVENTFD_FLAG_DEASSIGN: UInt32 = 1 << 2
let KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY: UInt32 = 1 << 3

/// The VM's ioeventfds (`kvm->ioeventfds`), under `kvm->slots_lock` in the kernel.
struct IOEventFDs: Sendable {
    var items: [IOEventFD] = []

    static func bus(_ flags: UInt32) -> IOBus {
        if flags & KVM_IOEVENTFD_FLAG_PIO != 0 { return .pio }
        if flags & KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY != 0 { return .virtioCCWNotify }
        return .mmio
    }

    /// kvm_ioeventfd.
    mutating func ioctl(_ args: kvm_ioeventfd) -> Int32 {
        args.flags & KVM_IOEVENTFD_FLAG_DEASSIGN != 0 ? deassign(args) : assign(args)
    }

    /// kvm_assign_ioeventfd.
    mutating func assign(_ args: kvm_ioeventfd) -> Int32 {
        let bus = Self.bus(args.flags)
        // A natural word, or 0 to ignore the length.
        guard [0, 1, 2, 4, 8].contains(args.len) else { return fail(.invalidArgument) }
        if args.addr &+ UInt64(args.len) < args.addr { return fail(.invalidArgument) }
        if args.flags & ~KVM_IOEVENTFD_VALID_FLAG_MASK != 0 { return fail(.invalidArgument) }
        if args.len == 0 && args.flags & KVM_IOEVENTFD_FLAG_DATAMATCH != 0 { return fail(.invalidArgument) }
        var r = assign(args, on: bus)
        if r != 0 { return r }
        // Length-less MMIO also goes on the fast MMIO bus.
        if args.len == 0 && bus == .mmio {
            r = assign(args, on: .fastMMIO)
            if r != 0 { _ = deassign(args, on: bus) }
        }
        return r
    }

    private mutating func assign(_ args: kvm_ioeventfd, on bus: IOBus) -> Int32 {
        let r = checkEventFD(args.fd)
        if r != 0 { return r }
        let datamatch = args.flags & KVM_IOEVENTFD_FLAG_DATAMATCH != 0 ? args.datamatch : nil
        // ioeventfd_check_collision: the same address and length, and
        // either a wildcard or the same value, whatever the eventfd.
        let collides = items.contains { p in
            p.bus == bus && p.address == args.addr
                && (p.length == 0 || args.len == 0
                    || (p.length == args.len && (p.datamatch == nil || datamatch == nil || p.datamatch == datamatch)))
        }
        if collides { return fail(.fileExists) }
        let copy = fcntl(args.fd, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { return -errno }
        items.append(IOEventFD(bus: bus, address: args.addr, length: args.len, descriptor: copy,
                               userDescriptor: args.fd, datamatch: datamatch))
        return 0
    }

    /// kvm_deassign_ioeventfd: ENOENT unless a registration matches exactly.
    mutating func deassign(_ args: kvm_ioeventfd) -> Int32 {
        let bus = Self.bus(args.flags)
        let r = deassign(args, on: bus)
        if args.len == 0 && bus == .mmio { _ = deassign(args, on: .fastMMIO) }
        return r
    }

    private mutating func deassign(_ args: kvm_ioeventfd, on bus: IOBus) -> Int32 {
        let r = checkEventFD(args.fd)
        if r != 0 { return r }
        let wildcard = args.flags & KVM_IOEVENTFD_FLAG_DATAMATCH == 0
        guard let index = items.firstIndex(where: { p in
            p.bus == bus && p.userDescriptor == args.fd && p.address == args.addr && p.length == args.len
                && (p.datamatch == nil) == wildcard && (wildcard || p.datamatch == args.datamatch)
        }) else { return fail(.noSuchFileOrDirectory) }
        _ = Glibc.close(items[index].descriptor)
        items.remove(at: index)
        return 0
    }

    /// For the CPU: a guest write of `length` bytes of `value` to `address`
    /// on `bus` (.pio or .mmio). When an ioeventfd takes it, its eventfd is
    /// signalled and the write is handled: no exit.
    func write(_ bus: IOBus, address: UInt64, length: Int, value: UInt64) -> Bool {
        // The fast MMIO bus first, as the kernel tries it on an MMIO exit.
        // No array of buses: this runs on every port and MMIO write exit.
        if bus == .mmio && signalFirst(on: .fastMMIO, address: address, length: length, value: value) { return true }
        return signalFirst(on: bus, address: address, length: length, value: value)
    }

    private func signalFirst(on bus: IOBus, address: UInt64, length: Int, value: UInt64) -> Bool {
        guard let hit = items.first(where: { $0.bus == bus && $0.matches(address: address, length: length, value: value) }) else {
            return false
        }
        signalEventFD(hit.descriptor)
        return true
    }

    func closeAll() {
        for item in items { _ = Glibc.close(item.descriptor) }
    }
}

extension SoftBackend {
    /// KVM_IRQFD (the kernel's kvm_irqfd): unknown flags are refused; deassign needs no irqchip.
    func kvm_vm_irqfd(_ vm: SoftVM, _ args: kvm_irqfd) -> Int32 {
        let known = UInt32(KVM_IRQFD_FLAG_DEASSIGN) | UInt32(KVM_IRQFD_FLAG_RESAMPLE)
        if args.flags & ~known != 0 { return fail(.invalidArgument) }
        if args.flags & UInt32(KVM_IRQFD_FLAG_DEASSIGN) != 0 {
            guard let irqfds = vm.irqfds.withLock({ $0 }) else {
                return checkEventFD(Int32(bitPattern: args.fd))
            }
            return irqfds.deassign(args)
        }
        // kvm_arch_irqfd_allowed: x86 needs the in-kernel irqchip.
        guard let irqchip = vm.irqchip else { return fail(.invalidArgument) }
        let irqfds = vm.irqfds.withLock { slot -> IRQFDs? in
            if slot == nil { slot = IRQFDs(irqchip: irqchip) }
            return slot
        }
        guard let irqfds else { return fail(.noMemory) }
        return irqfds.assign(args)
    }
}
