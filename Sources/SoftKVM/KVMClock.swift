import CLinuxKVM
import Glibc
import KVM
import Synchronization
import X86

// Guest time, after the kernel's arch/x86/kvm/x86.c: the TSC of each vCPU
// (KVM_GET/SET_TSC_KHZ, synchronisation of the TSCs user space writes),
// kvmclock (the pvclock structures behind MSR_KVM_SYSTEM_TIME(_NEW) and
// MSR_KVM_WALL_CLOCK(_NEW)) and KVM_GET/SET_CLOCK.
//
// Every guest clock is the host's monotonic clock, scaled or offset: the
// TSC is host time at the vCPU's frequency plus an offset, kvmclock is
// host time plus the VM's offset. So a "master clock" always exists, as
// KVM's does when the host TSC is stable: every vCPU's pvclock
// extrapolates from one instant of host time and the guest is told
// (PVCLOCK_TSC_STABLE_BIT) that the clocks of its CPUs agree.

let MSR_KVM_WALL_CLOCK: UInt32 = 0x11
let MSR_KVM_SYSTEM_TIME: UInt32 = 0x12
let MSR_KVM_WALL_CLOCK_NEW: UInt32 = 0x4B56_4D00
let MSR_KVM_SYSTEM_TIME_NEW: UInt32 = 0x4B56_4D01
let MSR_IA32_TSC_ADJUST: UInt32 = 0x3B
let MSR_IA32_TSC_DEADLINE: UInt32 = 0x6E0

let KVM_CPUID_SIGNATURE: UInt32 = 0x4000_0000
let KVM_CPUID_FEATURES: UInt32 = 0x4000_0001
let KVM_FEATURE_CLOCKSOURCE = 0
let KVM_FEATURE_NOP_IO_DELAY = 1
let KVM_FEATURE_CLOCKSOURCE2 = 3
let KVM_FEATURE_CLOCKSOURCE_STABLE_BIT = 24

let PVCLOCK_TSC_STABLE_BIT: UInt8 = 1 << 0
/// KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC.
let KVM_CLOCK_VALID_FLAGS = UInt32(KVM_CLOCK_TSC_STABLE) | UInt32(KVM_CLOCK_REALTIME) | UInt32(KVM_CLOCK_HOST_TSC)
/// The highest frequency KVM_SET_TSC_KHZ takes (kvm_caps.max_guest_tsc_khz
/// is what the hardware's scaling ratio reaches; here a bound that keeps
/// the pvclock scale in range).
let maxGuestTSCKilohertz: UInt32 = 0x7FFF_FFFF

/// The VM's clocks (`kvm->arch`'s clock fields).
struct VMClock: Sendable {
    /// kvmclock = host monotonic ns + this (wrapping): 0 at VM creation.
    var kvmclockOffset: UInt64
    /// The instant every vCPU's pvclock extrapolates from (master_kernel_ns).
    let masterHostNanoseconds: UInt64
    /// KVM_SET_TSC_KHZ on the VM: the frequency of vCPUs made later.
    var defaultKilohertz = TimeStampCounter.defaultKilohertz
    /// The last TSC write (or vCPU creation) the others synchronise with
    /// (kvm->arch.last_tsc_*): the value, when, the offset it gave, at which frequency.
    var lastTSCWrite: (value: UInt64, hostNanoseconds: UInt64, offset: UInt64, kilohertz: UInt32)? = nil
    /// Whether vCPU 0 set up the old kvmclock MSR, which gets no stable bit.
    var bootVCPURunsOldKvmclock = false
    /// MSR_KVM_WALL_CLOCK(_NEW): where the guest last asked for the wall clock.
    var wallClock: UInt64 = 0

    init(now: UInt64) {
        kvmclockOffset = 0 &- now
        masterHostNanoseconds = now
    }

    /// get_kvmclock_ns.
    func kvmclock(atHostNanoseconds now: UInt64) -> UInt64 { now &+ kvmclockOffset }
}

/// A vCPU's kvmclock (`vcpu->arch.time` and its pvclock cache).
struct VCPUClock: Sendable {
    /// MSR_KVM_SYSTEM_TIME(_NEW): the pvclock's address, bit 0 enabling it.
    var systemTime: UInt64 = 0
    /// What the pvclock in guest memory was last computed from, so that it
    /// is rewritten only when one of them changes (KVM_REQ_CLOCK_UPDATE).
    var written: PVClockInputs? = nil
}

/// What a vCPU's pvclock structure depends on.
struct PVClockInputs: Equatable, Sendable {
    var address: UInt64
    var tscOffset: UInt64
    var kilohertz: UInt32
    var kvmclockOffset: UInt64
    var flags: UInt8
}

/// kvm_get_time_scale: the multiplier and shift that turn `baseHz` ticks into `scaledHz` ones.
func kvm_get_time_scale(scaledHz: UInt64, baseHz: UInt64) -> (shift: Int8, multiplier: UInt32) {
    var tps64 = baseHz
    var scaled64 = scaledHz
    var shift: Int32 = 0
    while tps64 > scaled64 &* 2 || tps64 & 0xFFFF_FFFF_0000_0000 != 0 {
        tps64 >>= 1
        shift -= 1
    }
    var tps32 = UInt32(truncatingIfNeeded: tps64)
    while UInt64(tps32) <= scaled64 || scaled64 & 0xFFFF_FFFF_0000_0000 != 0 {
        if scaled64 & 0xFFFF_FFFF_0000_0000 != 0 || tps32 & 0x8000_0000 != 0 {
            scaled64 >>= 1
        } else {
            tps32 <<= 1
        }
        shift += 1
    }
    // div_frac: (dividend << 32) / divisor.
    let multiplier = UInt32(truncatingIfNeeded: (UInt64(UInt32(truncatingIfNeeded: scaled64)) << 32) / UInt64(max(tps32, 1)))
    return (Int8(truncatingIfNeeded: shift), multiplier)
}

/// Guest-physical memory as the vCPU's CPU sees it, for the structures
/// KVM writes into the guest (kvm_write_guest): a write that does not fall
/// inside one writable slot is dropped, as a failed kvm_write_guest is.
enum GuestPhysical {
    static func withBytes<T>(_ memory: PhysicalMemory, _ address: UInt64, _ count: Int,
                             _ body: (UnsafeMutableRawPointer) -> T) -> T? {
        for range in memory.ranges where address >= range.guestAddress && address - range.guestAddress < range.size {
            let offset = address - range.guestAddress
            guard !range.readOnly, offset + UInt64(count) <= range.size else { return nil }
            // mark_page_dirty: the page joins the dirty log.
            if let bitmap = range.dirtyBitmap { PhysicalRange.markDirty(bitmap, page: offset / PAGE_SIZE) }
            return body(range.host + Int(offset))
        }
        return nil
    }

    static func read32(_ memory: PhysicalMemory, _ address: UInt64) -> UInt32? {
        for range in memory.ranges where address >= range.guestAddress && address - range.guestAddress < range.size {
            let offset = address - range.guestAddress
            guard offset + 4 <= range.size else { return nil }
            return (range.host + Int(offset)).loadUnaligned(as: UInt32.self)
        }
        return nil
    }
}

extension SoftBackend {
    // MARK: KVM_GET_CLOCK, KVM_SET_CLOCK

    /// KVM_GET_CLOCK (get_kvmclock): the master clock is always in use, so
    /// the reading is stable and comes with the host's wall time.
    func kvm_vm_ioctl_get_clock(_ vm: SoftVM, _ arg: UInt) -> Int32 {
        var data = kvm_clock_data()
        let now = TimeStampCounter.hostNanoseconds()
        var real = timespec()
        clock_gettime(CLOCK_REALTIME, &real)
        data.clock = vm.arch.withLock { $0.clock.kvmclock(atHostNanoseconds: now) }
        data.flags = UInt32(KVM_CLOCK_TSC_STABLE) | UInt32(KVM_CLOCK_REALTIME)
        data.realtime = UInt64(real.tv_sec) * 1_000_000_000 + UInt64(real.tv_nsec)
        return UserMemory.write(data, to: arg) ? 0 : fail(.badAddress)
    }

    /// KVM_SET_CLOCK (kvm_vm_ioctl_set_clock): with KVM_CLOCK_REALTIME the
    /// time that passed since `realtime` is added, never going backwards.
    func kvm_vm_ioctl_set_clock(_ vm: SoftVM, _ arg: UInt) -> Int32 {
        guard var data = UserMemory.read(kvm_clock_data.self, from: arg) else { return fail(.badAddress) }
        if data.flags & ~KVM_CLOCK_VALID_FLAGS != 0 { return fail(.invalidArgument) }
        let now = TimeStampCounter.hostNanoseconds()
        if data.flags & UInt32(KVM_CLOCK_REALTIME) != 0 {
            var real = timespec()
            clock_gettime(CLOCK_REALTIME, &real)
            let nowReal = UInt64(real.tv_sec) * 1_000_000_000 + UInt64(real.tv_nsec)
            if nowReal > data.realtime { data.clock &+= nowReal - data.realtime }
        }
        // Every vCPU rewrites its pvclock at its next entry (KVM_REQ_CLOCK_UPDATE):
        // the offset is one of its inputs.
        vm.arch.withLock { $0.clock.kvmclockOffset = data.clock &- now }
        return 0
    }

    // MARK: TSC frequency

    /// KVM_SET_TSC_KHZ on a vCPU (kvm_set_tsc_khz): any frequency, since
    /// the TSC is scaled in software; 0 means the VM's default.
    func kvm_vcpu_ioctl_set_tsc_khz(_ vm: SoftVM, _ arch: inout VCPUArch, _ arg: UInt) -> Int32 {
        var khz = UInt32(truncatingIfNeeded: arg)
        if khz >= maxGuestTSCKilohertz { return fail(.invalidArgument) }
        if khz == 0 { khz = vm.arch.withLock { $0.clock.defaultKilohertz } }
        arch.cpu.tsc.setKilohertz(khz, atHostNanoseconds: TimeStampCounter.hostNanoseconds())
        return 0
    }

    /// KVM_SET_TSC_KHZ on the VM: the frequency of the vCPUs made after it.
    func kvm_vm_ioctl_set_tsc_khz(_ vm: SoftVM, _ arg: UInt) -> Int32 {
        var khz = UInt32(truncatingIfNeeded: arg)
        if khz >= maxGuestTSCKilohertz { return fail(.invalidArgument) }
        if khz == 0 { khz = TimeStampCounter.defaultKilohertz }
        return vm.vcpus.withLock { vcpus in
            if vcpus.created > 0 { return fail(.invalidArgument) }
            vm.arch.withLock { $0.clock.defaultKilohertz = khz }
            return 0
        }
    }

    // MARK: TSC synchronisation

    /// kvm_synchronize_tsc: a value user space writes (or 0 at vCPU
    /// creation, `value` nil). Within a second of what the last write would
    /// have counted to since, it is taken as an attempt to synchronise the
    /// vCPUs, and this vCPU gets the same offset; otherwise it starts a new
    /// generation the later writes match.
    func kvm_synchronize_tsc(_ vm: SoftVM, _ tsc: inout TimeStampCounter, _ value: UInt64?) {
        let now = TimeStampCounter.hostNanoseconds()
        let data = value ?? 0
        vm.arch.withLock { arch in
            if let last = arch.clock.lastTSCWrite, last.kilohertz == tsc.kilohertz {
                let expected = last.value &+ tsc.cycles(nanoseconds: now &- last.hostNanoseconds)
                let second = UInt64(tsc.kilohertz) * 1000
                let distance = data >= expected ? data - expected : expected - data
                if value == nil || distance < second {
                    tsc.offset = last.offset
                    return
                }
            }
            tsc.offset = tsc.offset(toRead: data, atHostNanoseconds: now)
            arch.clock.lastTSCWrite = (data, now, tsc.offset, tsc.kilohertz)
        }
    }

    // MARK: kvmclock

    /// kvm_write_wall_clock: the guest's wall time at kvmclock 0, at
    /// `address`, with the version protocol pvclock readers use.
    func kvm_write_wall_clock(_ vm: SoftVM, _ memory: PhysicalMemory, _ address: UInt64) {
        let now = TimeStampCounter.hostNanoseconds()
        var real = timespec()
        clock_gettime(CLOCK_REALTIME, &real)
        let realNs = UInt64(real.tv_sec) * 1_000_000_000 + UInt64(real.tv_nsec)
        let epoch = realNs &- vm.arch.withLock { $0.clock.kvmclock(atHostNanoseconds: now) }
        guard var version = GuestPhysical.read32(memory, address) else { return }
        if version & 1 != 0 { version &+= 1 }  // First write: whatever was there.
        version &+= 1
        _ = GuestPhysical.withBytes(memory, address, 12) { bytes in
            bytes.storeBytes(of: version.littleEndian, as: UInt32.self)
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            bytes.storeBytes(of: UInt32(truncatingIfNeeded: epoch / 1_000_000_000).littleEndian, toByteOffset: 4, as: UInt32.self)
            bytes.storeBytes(of: UInt32(epoch % 1_000_000_000).littleEndian, toByteOffset: 8, as: UInt32.self)
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            bytes.storeBytes(of: (version &+ 1).littleEndian, as: UInt32.self)
        }
    }

    /// The inputs of this vCPU's pvclock now, nil when kvmclock is off.
    func pvclockInputs(_ arch: VCPUArch, _ clock: VMClock) -> PVClockInputs? {
        guard arch.clock.systemTime & 1 != 0 else { return nil }
        return PVClockInputs(address: arch.clock.systemTime & ~1, tscOffset: arch.cpu.tsc.offset,
                             kilohertz: arch.cpu.tsc.kilohertz, kvmclockOffset: clock.kvmclockOffset,
                             flags: clock.bootVCPURunsOldKvmclock ? 0 : PVCLOCK_TSC_STABLE_BIT)
    }

    /// kvm_guest_time_update, when its inputs changed since the last write:
    /// the pvclock structure (struct pvclock_vcpu_time_info) from the
    /// master clock's instant.
    func kvm_guest_time_update(_ arch: inout VCPUArch, _ vm: SoftVM) {
        guard arch.clock.systemTime & 1 != 0 else { return }
        let clock = vm.arch.withLock { $0.clock }
        guard let inputs = pvclockInputs(arch, clock), inputs != arch.clock.written else { return }
        let master = clock.masterHostNanoseconds
        let tscTimestamp = arch.cpu.tsc.value(atHostNanoseconds: master)
        let systemTime = clock.kvmclock(atHostNanoseconds: master)
        let (shift, multiplier) = kvm_get_time_scale(scaledHz: 1_000_000_000, baseHz: UInt64(inputs.kilohertz) * 1000)
        let memory = arch.cpu.memory
        guard let old = GuestPhysical.read32(memory, inputs.address) else { return }
        // The version is odd while the structure changes, and moves by 2 in all.
        let version = (old &+ 1) | 1
        // Kept only once written: a structure outside memory now (before
        // the first KVM_RUN has a memory view) is written when it can be.
        let written = GuestPhysical.withBytes(memory, inputs.address, 32) { bytes in
            bytes.storeBytes(of: version.littleEndian, as: UInt32.self)
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            bytes.storeBytes(of: tscTimestamp.littleEndian, toByteOffset: 8, as: UInt64.self)
            bytes.storeBytes(of: systemTime.littleEndian, toByteOffset: 16, as: UInt64.self)
            bytes.storeBytes(of: multiplier.littleEndian, toByteOffset: 24, as: UInt32.self)
            bytes.storeBytes(of: shift, toByteOffset: 28, as: Int8.self)
            bytes.storeBytes(of: inputs.flags, toByteOffset: 29, as: UInt8.self)
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            bytes.storeBytes(of: (version &+ 1).littleEndian, as: UInt32.self)
        }
        if written != nil { arch.clock.written = inputs }
    }

    /// The MSR_KVM_SYSTEM_TIME(_NEW) write (kvm_write_system_time).
    func kvm_write_system_time(_ arch: inout VCPUArch, _ vm: SoftVM, vcpuID: UInt32, _ value: UInt64, oldMSR: Bool,
                               hostInitiated: Bool) {
        if vcpuID == 0 && !hostInitiated {
            vm.arch.withLock { $0.clock.bootVCPURunsOldKvmclock = oldMSR }
        }
        arch.clock.systemTime = value
        arch.clock.written = nil
        kvm_guest_time_update(&arch, vm)
    }
}
