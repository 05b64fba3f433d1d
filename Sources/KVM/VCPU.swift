import CLinuxKVM
import KVMPlatform
import Synchronization
import SystemPackage

/// The mapping of a vCPU descriptor: the `kvm_run` page, the pio data page and
/// the coalesced MMIO ring. Shared by the vCPU and its kickers, so that a
/// kick never writes an unmapped page.
final class RunPage: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let size: Int
    let backend: any KVMBackend
    /// The thread inside KVM_RUN, or 0. A kick signals it while holding the
    /// lock, and `run()` clears it under the same lock, so a signal never goes
    /// to a thread that has left `run()` (and may have ended).
    let runningThread = Mutex<UInt>(0)

    init(base: UnsafeMutableRawPointer, size: Int, backend: any KVMBackend) {
        self.base = base
        self.size = size
        self.backend = backend
    }

    var run: UnsafeMutablePointer<kvm_run> { base.assumingMemoryBound(to: kvm_run.self) }

    /// `kvm_run.immediate_exit`. A kick writes it while holding
    /// `runningThread`'s lock, and `run()` takes that lock before KVM_RUN, so
    /// the lock orders the write before the next KVM_RUN.
    var immediateExit: UnsafeMutablePointer<UInt8> {
        (base + swiftkvm_run_immediate_exit_offset()).assumingMemoryBound(to: UInt8.self)
    }

    deinit { backend.unmapVCPU(base, size: size) }
}

/// A handle that ends a vCPU's `run()` from any thread: it sets
/// `immediate_exit` and signals the thread inside KVM_RUN, which then returns
/// `.interrupted`. A kick while the vCPU is not running makes its next
/// `run()` return `.interrupted` at once.
public struct VCPUKicker: Sendable {
    let page: RunPage

    public func kick() {
        page.runningThread.withLock { thread in
            page.immediateExit.pointee = 1
            if thread != 0 { ThreadKick.kick(thread: thread) }
        }
    }
}

/// A virtual CPU. Requests may come from any thread (the kernel serializes
/// them per vCPU); `run()` is made from one thread at a time, the one that
/// answers the exits.
public final class VCPU: @unchecked Sendable {
    /// The vCPU's id, its APIC id on x86.
    public let id: UInt32
    /// The VM the vCPU belongs to; the vCPU keeps it alive.
    public let vm: VirtualMachine
    let handle: KVMHandle
    let page: RunPage
    /// Where in the mapping the answer to the last exit's read goes, and how many bytes it takes.
    private var pendingRead: (offset: Int, length: Int)?
    /// The MSR access the last exit handed to user space (EnableCapability.swift answers it).
    var pendingMSR: MSRExit?
    /// The last thread `run()` unblocked the kick signal in, so that it is done once per thread, not per run.
    private var unblockedThread: UInt = 0

    init(vm: VirtualMachine, id: UInt32, handle: KVMHandle) throws(KVMError) {
        self.vm = vm
        self.id = id
        self.handle = handle
        let size = vm.vcpuMmapSize
        switch handle.backend.mapVCPU(handle.descriptor, size: size) {
        case .success(let base):
            page = RunPage(base: base, size: size, backend: handle.backend)
        case .failure(let errno):
            throw KVMError(errno: errno, request: nil, operation: "mmap of vCPU \(id)'s kvm_run page",
                           message: "could not map \(size) bytes of the vCPU descriptor")
        }
        ThreadKick.install()
    }

    deinit {
        // Close the vCPU before the VM reference goes, so the VM's memory
        // outlives every kernel object that can touch it.
        handle.close()
    }

    /// The vCPU descriptor, for requests this API does not wrap. It stays
    /// open while the vCPU lives; do not close it.
    public var rawDescriptor: Int32 { handle.descriptor }

    /// A kicker for ending `run()` from another thread.
    public var kicker: VCPUKicker { VCPUKicker(page: page) }

    /// `kvm_run.immediate_exit`: while set, KVM_RUN returns at once with
    /// `.interrupted`. `run()` clears it after such a return.
    public var immediateExit: Bool {
        get { page.runningThread.withLock { _ in page.immediateExit.pointee != 0 } }
        set { page.runningThread.withLock { _ in page.immediateExit.pointee = newValue ? 1 : 0 } }
    }

    /// `kvm_run.request_interrupt_window`: ask for an `.irqWindowOpen` exit as
    /// soon as the guest can take an interrupt (user-space irqchip only).
    public var requestInterruptWindow: Bool {
        get { page.run.pointee.request_interrupt_window != 0 }
        set { page.run.pointee.request_interrupt_window = newValue ? 1 : 0 }
    }

    /// `kvm_run.if_flag`: whether the guest had interrupts enabled at the last exit.
    public var interruptFlag: Bool { page.run.pointee.if_flag != 0 }

    /// `kvm_run.ready_for_interrupt_injection`: whether KVM_INTERRUPT would be taken now.
    public var readyForInterruptInjection: Bool { page.run.pointee.ready_for_interrupt_injection != 0 }

    /// `kvm_run.cr8` and `kvm_run.apic_base` as of the last exit.
    public var cr8: UInt64 { page.run.pointee.cr8 }
    public var apicBase: UInt64 { page.run.pointee.apic_base }

    /// The raw `kvm_run` mapping (the run page, then the pio data page and the
    /// coalesced MMIO ring), for the VM's coalesced-MMIO reader and for tests
    /// that compare it byte for byte. Valid while the vCPU lives.
    public var runMapping: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: page.base, count: page.size) }

    /// Runs the guest until it needs user space. Returns the exit, its
    /// payload copied out of `kvm_run`; a port or MMIO read must be answered
    /// with `setInput` before the next `run()`. A signal, kick or
    /// `immediateExit` gives `.interrupted`. The ioctl is KVM_RUN.
    public func run() throws(KVMError) -> VCPUExit {
        pendingRead = nil
        pendingMSR = nil
        let thread = ThreadKick.currentThread
        if thread != unblockedThread {
            ThreadKick.unblockInCurrentThread()
            unblockedThread = thread
        }
        page.runningThread.withLock { $0 = thread }
        var result: Int32
        // EAGAIN: a vCPU waiting for INIT got it (or its SIPI) and is to be
        // run again, as QEMU does (kvm_arch_vcpu_ioctl_run's UNINITIALIZED case).
        repeat {
            result = handle.backend.ioctl(handle.descriptor, KVMRequest.run.number, nil)
        } while result == -Errno.resourceTemporarilyUnavailable.rawValue
        page.runningThread.withLock { $0 = 0 }
        if result < 0 {
            let errno = Errno(rawValue: -result)
            if errno == .interrupted {
                immediateExit = false
                return .interrupted
            }
            throw KVMError(errno: errno, request: .run, context: "vCPU \(id)")
        }
        return decodeExit()
    }

    /// Answers the read the last exit asked for (port input or an MMIO read)
    /// with `bytes`, which must be as many as the exit's `length` says.
    /// KVM copies them into the guest on the next `run()`.
    public func setInput(_ bytes: some Collection<UInt8>) throws(KVMError) {
        guard let pending = pendingRead else {
            throw KVMError(errno: .invalidArgument, request: nil, operation: "answering a guest read",
                           message: "the last exit was not a port or MMIO read")
        }
        guard bytes.count == pending.length else {
            throw KVMError(errno: .invalidArgument, request: nil, operation: "answering a guest read",
                           message: "the read takes \(pending.length) bytes, not \(bytes.count)")
        }
        UnsafeMutableRawBufferPointer(start: page.base + pending.offset, count: pending.length).copyBytes(from: bytes)
    }

    /// Answers a read of up to 8 bytes with `value`, little-endian, truncated to the read's length.
    public func setInput(_ value: UInt64) throws(KVMError) {
        guard let pending = pendingRead, pending.length <= 8 else {
            throw KVMError(errno: .invalidArgument, request: nil, operation: "answering a guest read",
                           message: pendingRead == nil ? "the last exit was not a port or MMIO read"
                                                        : "the read takes \(pendingRead!.length) bytes; pass them as bytes")
        }
        var little = value.littleEndian
        withUnsafeBytes(of: &little) { bytes in
            (page.base + pending.offset).copyMemory(from: bytes.baseAddress!, byteCount: pending.length)
        }
    }

    private func decodeExit() -> VCPUExit {
        let run = page.run
        let reason = ExitReason(rawValue: run.pointee.exit_reason)
        switch reason {
        case .io:
            let io = run.pointee.io
            let length = Int(io.size) * Int(io.count)
            let offset = Int(io.data_offset)
            guard length > 0, offset >= 0, offset + length <= page.size else { return .unhandled(reason) }
            let access = PortIO(
                direction: io.direction == KVM_EXIT_IO_OUT ? .out : .in, port: io.port,
                size: io.size, count: io.count, mapping: page.base + offset)
            if access.direction == .in { pendingRead = (offset, length) }
            return .io(access)
        case .mmio:
            let mmio = run.pointee.mmio
            let length = min(Int(mmio.len), 8)
            let access = MMIOAccess(address: mmio.phys_addr, length: UInt32(length), isWrite: mmio.is_write != 0, data: mmio.data)
            if !access.isWrite {
                pendingRead = (swiftkvm_run_mmio_data_offset(), length)
            }
            return .mmio(access)
        case .hlt:
            return .halt
        case .shutdown:
            return .shutdown
        case .intr:
            return .interrupted
        case .irqWindowOpen:
            return .irqWindowOpen
        case .debug:
            let arch = run.pointee.debug.arch
            return .debug(DebugExit(exception: arch.exception, pc: arch.pc, dr6: arch.dr6, dr7: arch.dr7))
        case .failEntry:
            let fail = run.pointee.fail_entry
            return .failEntry(hardwareReason: fail.hardware_entry_failure_reason, cpu: fail.cpu)
        case .unknown:
            return .hardwareUnknown(hardwareReason: run.pointee.hw.hardware_exit_reason)
        case .exception:
            let exception = run.pointee.ex
            return .exception(vector: exception.exception, errorCode: exception.error_code)
        case .hypercall:
            let call = run.pointee.hypercall
            return .hypercall(Hypercall(number: call.nr, arguments: [call.args.0, call.args.1, call.args.2, call.args.3, call.args.4, call.args.5], longMode: call.longmode != 0))
        case .internalError:
            let failure = run.pointee.internal
            let count = min(Int(failure.ndata), 16)
            let data = withUnsafeBytes(of: failure.data) { Array($0.bindMemory(to: UInt64.self).prefix(count)) }
            return .internalError(InternalError(suberror: failure.suberror, data: data))
        case .systemEvent:
            let event = run.pointee.system_event
            let count = min(Int(event.ndata), 16)
            let data = withUnsafeBytes(of: event.data) { Array($0.bindMemory(to: UInt64.self).prefix(count)) }
            return .systemEvent(SystemEvent(type: event.type, data: data))
        case .ioapicEoi:
            return .ioapicEOI(vector: run.pointee.eoi.vector)
        case .tprAccess:
            let access = run.pointee.tpr_access
            return .tprAccess(rip: access.rip, isWrite: access.is_write != 0)
        case .x86Rdmsr, .x86Wrmsr:
            let msr = run.pointee.msr
            let access = MSRExit(isWrite: reason == .x86Wrmsr, index: msr.index, reason: msr.reason, data: msr.data)
            pendingMSR = access
            return .msr(access)
        case .nmi:
            return .nmi
        case .x86BusLock:
            return .busLock
        case .dirtyRingFull:
            return .dirtyRingFull
        case .notify:
            return .notify(flags: run.pointee.notify.flags)
        default:
            return .unhandled(reason)
        }
    }
}
