import CLinuxKVM
import Glibc
import Synchronization
import X86

// The in-kernel local APIC, after the kernel's arch/x86/kvm/lapic.c: the
// xAPIC register page (the same 1 KiB KVM_GET_LAPIC copies out), interrupt
// acceptance, PPR, EOI, the ICR's IPIs, the LVTs and the timer in its
// one-shot, periodic and TSC-deadline modes. Function names are the
// kernel's.
//
// `KVMLapic` is the register state machine, a value that tests drive
// alone; `LocalAPIC` is one vCPU's, behind a lock, since other threads
// deliver into it. Register writes return what must happen outside the
// lock (an IPI to send, an EOI to broadcast, the APIC map to rebuild).

let APIC_ID = 0x20
let APIC_LVR = 0x30
let APIC_TASKPRI = 0x80
let APIC_ARBPRI = 0x90
let APIC_PROCPRI = 0xA0
let APIC_EOI = 0xB0
let APIC_LDR = 0xD0
let APIC_DFR = 0xE0
let APIC_SPIV = 0xF0
let APIC_ISR = 0x100
let APIC_TMR = 0x180
let APIC_IRR = 0x200
let APIC_ESR = 0x280
let APIC_LVTCMCI = 0x2F0
let APIC_ICR = 0x300
let APIC_ICR2 = 0x310
let APIC_LVTT = 0x320
let APIC_LVTTHMR = 0x330
let APIC_LVTPC = 0x340
let APIC_LVT0 = 0x350
let APIC_LVT1 = 0x360
let APIC_LVTERR = 0x370
let APIC_TMICT = 0x380
let APIC_TMCCT = 0x390
let APIC_TDCR = 0x3E0
let APIC_SELF_IPI = 0x3F0

let APIC_VERSION: UInt32 = 0x14
let LAPIC_MMIO_LENGTH: UInt64 = 1 << 12
let APIC_DEFAULT_PHYS_BASE: UInt64 = 0xFEE0_0000
let APIC_BROADCAST: UInt32 = 0xFF

let APIC_LVT_MASKED: UInt32 = 1 << 16
let APIC_SEND_PENDING: UInt32 = 1 << 12
let APIC_VECTOR_MASK: UInt32 = 0xFF
let APIC_MODE_MASK: UInt32 = 0x700
let APIC_INPUT_POLARITY: UInt32 = 1 << 13
let APIC_LVT_REMOTE_IRR: UInt32 = 1 << 14
let APIC_LVT_LEVEL_TRIGGER: UInt32 = 1 << 15
let LVT_MASK = APIC_LVT_MASKED | APIC_SEND_PENDING | APIC_VECTOR_MASK
let LINT_MASK = LVT_MASK | APIC_MODE_MASK | APIC_INPUT_POLARITY | APIC_LVT_REMOTE_IRR | APIC_LVT_LEVEL_TRIGGER

let APIC_DM_FIXED: UInt32 = 0x000
let APIC_DM_LOWEST: UInt32 = 0x100
let APIC_DM_SMI: UInt32 = 0x200
let APIC_DM_REMRD: UInt32 = 0x300
let APIC_DM_NMI: UInt32 = 0x400
let APIC_DM_INIT: UInt32 = 0x500
let APIC_DM_STARTUP: UInt32 = 0x600
let APIC_DM_EXTINT: UInt32 = 0x700

let APIC_DEST_NOSHORT: UInt32 = 0
let APIC_DEST_SELF: UInt32 = 0x40000
let APIC_DEST_ALLINC: UInt32 = 0x80000
let APIC_DEST_ALLBUT: UInt32 = 0xC0000
let APIC_SHORT_MASK: UInt32 = 0xC0000
let APIC_DEST_LOGICAL: UInt32 = 0x800
let APIC_INT_ASSERT: UInt32 = 0x4000
let APIC_INT_LEVELTRIG: UInt32 = 0x8000
let APIC_ICR_BUSY: UInt32 = 0x1000

let APIC_SPIV_APIC_ENABLED: UInt32 = 1 << 8
let APIC_DFR_FLAT: UInt32 = 0xFFFF_FFFF
let APIC_DFR_CLUSTER: UInt32 = 0x0FFF_FFFF
let APIC_LDR_MASK: UInt32 = 0xFF << 24

let APIC_LVT_TIMER_ONESHOT: UInt32 = 0
let APIC_LVT_TIMER_PERIODIC: UInt32 = 1 << 17
let APIC_LVT_TIMER_TSCDEADLINE: UInt32 = 2 << 17

/// LVT_TIMER ... LVT_CMCI; CMCI only with MCG_CMCI_P, which SoftKVM has not.
let KVM_APIC_MAX_NR_LVT_ENTRIES = 7
let LVT_TIMER = 0, LVT_LINT0 = 3, LVT_CMCI = 6
/// The LVT entries of a vCPU without CMCI (kvm_apic_calc_nr_lvt_entries).
let KVM_APIC_NR_LVT_ENTRIES = 6
let apic_lvt_mask: [UInt32] = [
    LVT_MASK,  // timer; its mode bits are added at run time
    LVT_MASK | APIC_MODE_MASK,  // thermal monitor
    LVT_MASK | APIC_MODE_MASK,  // performance counter
    LINT_MASK, LINT_MASK,
    LVT_MASK,  // error
    LVT_MASK | APIC_MODE_MASK,  // CMCI
]

func APIC_LVTx(_ index: Int) -> Int { index == LVT_CMCI ? APIC_LVTCMCI : APIC_LVTT + 0x10 * index }

/// APIC_BUS_CYCLE_NS_DEFAULT: a 1 GHz APIC bus, as KVM's default.
let apicBusCycleNanoseconds: UInt64 = 1
/// min_timer_period_us: KVM raises shorter periodic timers to 200 us.
let minimumTimerPeriodNanoseconds: UInt64 = 200_000

/// An interrupt message to local APICs (`struct kvm_lapic_irq`): from an
/// IOAPIC pin, an MSI, or an ICR write.
struct LAPICIRQ: Equatable, Sendable {
    var vector: UInt8
    /// APIC_DM_* (bits 10:8).
    var deliveryMode: UInt32
    var logicalDestination: Bool
    /// Assert (1) or deassert (0); IOAPIC and MSI messages always assert.
    var level: Bool = true
    var levelTriggered: Bool
    /// APIC_DEST_* shorthand of an IPI; 0 for IOAPIC and MSI messages.
    var shorthand: UInt32 = 0
    var destination: UInt32

    init(vector: UInt8, deliveryMode: UInt32, logicalDestination: Bool, level: Bool = true, levelTriggered: Bool,
         shorthand: UInt32 = 0, destination: UInt32) {
        self.vector = vector
        self.deliveryMode = deliveryMode
        self.logicalDestination = logicalDestination
        self.level = level
        self.levelTriggered = levelTriggered
        self.shorthand = shorthand
        self.destination = destination
    }

    init(_ message: APICMessage) {
        self.init(vector: message.vector, deliveryMode: UInt32(message.deliveryMode & 7) << 8,
                  logicalDestination: message.logicalDestination, levelTriggered: message.levelTriggered,
                  destination: message.destination)
    }

    /// kvm_lowest_prio_delivery.
    var isLowestPriority: Bool { deliveryMode == APIC_DM_LOWEST }
}

/// What a register access leaves for the caller to do once the APIC's lock is released.
struct LAPICEffects: Equatable, Sendable {
    /// An ICR write's message, from this APIC.
    var ipi: LAPICIRQ? = nil
    /// An EOI of `vector`, level-triggered when its TMR bit was set (kvm_ioapic_send_eoi).
    var eoi: (vector: UInt8, levelTriggered: Bool)? = nil
    /// The ID, LDR, DFR, software or hardware enable changed: the APIC map
    /// must be rebuilt (kvm->arch.apic_map_dirty).
    var mapDirty = false

    static func == (a: LAPICEffects, b: LAPICEffects) -> Bool {
        a.ipi == b.ipi && a.eoi?.vector == b.eoi?.vector && a.eoi?.levelTriggered == b.eoi?.levelTriggered
            && a.mapDirty == b.mapDirty
    }

    mutating func merge(_ other: LAPICEffects) {
        if let ipi = other.ipi { self.ipi = ipi }
        if let eoi = other.eoi { self.eoi = eoi }
        mapDirty = mapDirty || other.mapDirty
    }
}

/// The APIC timer (`struct kvm_timer`), in host nanoseconds of the monotonic clock.
struct LAPICTimer: Sendable {
    /// APIC_LVT_TIMER_* of the LVT timer entry.
    var mode: UInt32 = APIC_LVT_TIMER_ONESHOT
    /// The mode bits the LVT timer entry keeps: periodic, and TSC-deadline
    /// when the guest's CPUID has it.
    var modeMask: UInt32 = 0
    /// One period of one-shot and periodic mode, 0 when stopped.
    var period: UInt64 = 0
    /// When the running count reaches 0; 0 after a one-shot fired.
    var targetExpiration: UInt64 = 0
    /// The IA32_TSC_DEADLINE value in TSC-deadline mode (0: disarmed).
    var tscDeadline: UInt64 = 0
    /// `tscDeadline` as host time, computed when it was armed.
    var tscDeadlineExpiration: UInt64 = 0
    /// Whether the host timer runs (an hrtimer queued in the kernel).
    var armed = false
    /// Expirations not yet delivered into IRR (at most 1).
    var pending = 0
}

/// One local APIC's state (`struct kvm_lapic` and the vCPU fields it uses).
struct KVMLapic: Sendable {
    let vcpuID: UInt32
    /// The register page, as 256 little-endian words (KVM_GET_LAPIC's bytes).
    var regs = [UInt32](repeating: 0, count: 256)
    /// IA32_APIC_BASE (`vcpu->arch.apic_base`).
    var apicBase: UInt64 = MSR_IA32_APICBASE_ENABLE
    var baseAddress: UInt64 = 0
    var swEnabled = false
    var divideCount: UInt32 = 2
    var timer = LAPICTimer()
    var lvt0InNMIMode = false
    /// KVM_APIC_INIT and KVM_APIC_SIPI (`apic->pending_events`).
    var pendingINIT = false
    var pendingSIPI = false
    var sipiVector: UInt8 = 0
    /// NMIs delivered by messages, for the vCPU to take (`vcpu->arch.nmi_queued`).
    var nmiQueued = 0
    /// `vcpu->arch.apic_arb_prio`: lowest-priority deliveries taken.
    var arbitrationPriority: UInt32 = 0
    /// `vcpu->arch.pv.pv_unhalted`: a remote-read message wakes a halted vCPU.
    var pvUnhalted = false
    /// The kernel's cache of the in-service register (`isr_count`,
    /// `highest_isr_cache`): KVM_SET_LAPIC computes PPR before refreshing
    /// it, and what KVM_GET_LAPIC then shows depends on that.
    var isrCount = 0
    var highestISRCache: Int = -1

    init(vcpuID: UInt32) {
        self.vcpuID = vcpuID
    }

    // MARK: Registers

    func reg(_ offset: Int) -> UInt32 { regs[offset >> 2] }
    mutating func setReg(_ offset: Int, _ value: UInt32) { regs[offset >> 2] = value }

    var hwEnabled: Bool { apicBase & MSR_IA32_APICBASE_ENABLE != 0 }
    /// apic_enabled: both the hardware (IA32_APIC_BASE) and software (SPIV) enables.
    var enabled: Bool { hwEnabled && swEnabled }
    var xapicID: UInt32 { reg(APIC_ID) >> 24 }

    /// The vector bitmaps (ISR, TMR, IRR): 8 words 16 bytes apart.
    func testVector(_ vector: UInt8, _ base: Int) -> Bool {
        reg(base + Int(vector >> 5) * 0x10) & (1 << UInt32(vector & 31)) != 0
    }

    mutating func setVector(_ vector: UInt8, _ base: Int, _ value: Bool) {
        let offset = base + Int(vector >> 5) * 0x10
        let bit = UInt32(1) << UInt32(vector & 31)
        setReg(offset, value ? reg(offset) | bit : reg(offset) & ~bit)
    }

    /// apic_find_highest_vector: the highest set bit of a vector bitmap, or nil.
    func highestVector(_ base: Int) -> UInt8? {
        for word in stride(from: 7, through: 0, by: -1) {
            let value = reg(base + word * 0x10)
            if value != 0 { return UInt8(word * 32 + 31 - value.leadingZeroBitCount) }
        }
        return nil
    }

    // MARK: Reset (kvm_lapic_reset)

    /// kvm_lapic_reset: RESET (vCPU creation) or INIT. The BSP's LINT0 is
    /// ExtINT (KVM_X86_QUIRK_LINT0_REENABLED), so that the PIC reaches it.
    mutating func reset(initEvent: Bool, isResetBSP: Bool) -> LAPICEffects {
        var effects = LAPICEffects()
        if !initEvent {
            var base = APIC_DEFAULT_PHYS_BASE | MSR_IA32_APICBASE_ENABLE
            if isResetBSP { base |= MSR_IA32_APICBASE_BSP }
            effects.merge(setBase(base))
        }
        cancelTimer()
        if !initEvent { effects.merge(setXAPICID(vcpuID)) }
        setReg(APIC_LVR, APIC_VERSION | UInt32(KVM_APIC_NR_LVT_ENTRIES - 1) << 16)
        for i in 0..<KVM_APIC_NR_LVT_ENTRIES { setReg(APIC_LVTx(i), APIC_LVT_MASKED) }
        updateLVTT()
        if isResetBSP { setReg(APIC_LVT0, APIC_DM_EXTINT) }
        manageNMIWatchdog(reg(APIC_LVT0))
        setReg(APIC_DFR, APIC_DFR_FLAT)
        effects.mapDirty = true
        effects.merge(setSPIV(0xFF))
        setReg(APIC_TASKPRI, 0)
        setReg(APIC_LDR, 0)
        setReg(APIC_ESR, 0)
        setReg(APIC_ICR, 0)
        setReg(APIC_ICR2, 0)
        setReg(APIC_TDCR, 0)
        setReg(APIC_TMICT, 0)
        for i in 0..<8 {
            setReg(APIC_IRR + 0x10 * i, 0)
            setReg(APIC_ISR + 0x10 * i, 0)
            setReg(APIC_TMR + 0x10 * i, 0)
        }
        refreshISRCache()
        updateDivideCount()
        timer.pending = 0
        updatePPR()
        arbitrationPriority = 0
        return effects
    }

    // MARK: IA32_APIC_BASE (kvm_apic_set_base)

    /// __kvm_apic_set_base: the new value, with what enabling and
    /// relocating the APIC change.
    mutating func setBase(_ value: UInt64) -> LAPICEffects {
        var effects = LAPICEffects()
        let old = apicBase
        apicBase = value
        if (old ^ value) & MSR_IA32_APICBASE_ENABLE != 0 {
            if value & MSR_IA32_APICBASE_ENABLE != 0 {
                effects.merge(setXAPICID(vcpuID))
            } else {
                effects.mapDirty = true
            }
        }
        baseAddress = value & MSR_IA32_APICBASE_BASE
        return effects
    }

    mutating func setXAPICID(_ id: UInt32) -> LAPICEffects {
        setReg(APIC_ID, (id & 0xFF) << 24)
        return LAPICEffects(mapDirty: true)
    }

    /// apic_set_spiv: the software enable changes the APIC map.
    mutating func setSPIV(_ value: UInt32) -> LAPICEffects {
        let enabled = value & APIC_SPIV_APIC_ENABLED != 0
        setReg(APIC_SPIV, value)
        guard enabled != swEnabled else { return LAPICEffects() }
        swEnabled = enabled
        return LAPICEffects(mapDirty: true)
    }

    mutating func manageNMIWatchdog(_ lvt0: UInt32) {
        lvt0InNMIMode = lvt0 & (APIC_MODE_MASK | APIC_LVT_MASKED) == APIC_DM_NMI
    }

    // MARK: Priorities

    /// __apic_update_ppr: the processor priority from TPR and the highest
    /// vector in service. True when it went down (an interrupt may now be deliverable).
    @discardableResult
    mutating func updatePPR() -> Bool {
        let old = reg(APIC_PROCPRI)
        let tpr = reg(APIC_TASKPRI)
        let isrv = UInt32(highestISR() ?? 0)
        let ppr = (tpr & 0xF0) >= (isrv & 0xF0) ? tpr & 0xFF : isrv & 0xF0
        if ppr != old { setReg(APIC_PROCPRI, ppr) }
        return ppr < old
    }

    /// apic_has_interrupt_for_ppr: the highest requested vector whose class
    /// is above the processor priority.
    func interruptAbove(ppr: UInt32) -> UInt8? {
        guard let highest = highestVector(APIC_IRR), UInt32(highest) & 0xF0 > ppr else { return nil }
        return highest
    }

    /// kvm_apic_has_interrupt: the vector the APIC would give the CPU now, if any.
    mutating func hasInterrupt() -> UInt8? {
        guard hwEnabled else { return nil }
        updatePPR()
        return interruptAbove(ppr: reg(APIC_PROCPRI))
    }

    /// kvm_apic_ack_interrupt: the CPU takes `vector`: from IRR to ISR.
    mutating func acknowledge(_ vector: UInt8) {
        setVector(vector, APIC_IRR, false)
        setISR(vector)
        updatePPR()
    }

    /// apic_set_isr.
    mutating func setISR(_ vector: UInt8) {
        if testVector(vector, APIC_ISR) { return }
        setVector(vector, APIC_ISR, true)
        isrCount += 1
        highestISRCache = Int(vector)
    }

    /// apic_clear_isr.
    mutating func clearISR(_ vector: UInt8) {
        guard testVector(vector, APIC_ISR) else { return }
        setVector(vector, APIC_ISR, false)
        isrCount -= 1
        highestISRCache = -1
    }

    /// apic_find_highest_isr: through the cache, as the kernel looks.
    func highestISR() -> UInt8? {
        if isrCount <= 0 { return nil }
        if highestISRCache >= 0 { return UInt8(highestISRCache) }
        return highestVector(APIC_ISR)
    }

    /// kvm_apic_update_apicv (without APICv): the cache recounted from the page.
    mutating func refreshISRCache() {
        isrCount = (0..<8).reduce(0) { $0 + reg(APIC_ISR + $1 * 0x10).nonzeroBitCount }
        highestISRCache = -1
    }

    /// kvm_apic_accept_pic_intr: LINT0 takes the PIC's INTR when the APIC
    /// is hardware-disabled or LINT0 is an unmasked ExtINT.
    var acceptsPICInterrupt: Bool {
        if !hwEnabled { return true }
        let lvt0 = reg(APIC_LVT0)
        return lvt0 & APIC_LVT_MASKED == 0 && lvt0 & APIC_MODE_MASK == APIC_DM_EXTINT
    }

    var tpr: UInt32 { reg(APIC_TASKPRI) }

    /// apic_set_tpr.
    mutating func setTPR(_ value: UInt32) {
        setReg(APIC_TASKPRI, value)
        updatePPR()
    }

    // MARK: Acceptance (__apic_accept_irq)

    /// __apic_accept_irq: 1 when the APIC took the message, 0 when it
    /// discarded it. NMI, INIT and SIPI are left for the vCPU to take.
    mutating func acceptIRQ(_ irq: LAPICIRQ) -> Int32 {
        switch irq.deliveryMode {
        case APIC_DM_LOWEST, APIC_DM_FIXED:
            if irq.deliveryMode == APIC_DM_LOWEST { arbitrationPriority &+= 1 }
            if irq.levelTriggered && !irq.level { return 0 }
            guard enabled else { return 0 }
            setVector(irq.vector, APIC_TMR, irq.levelTriggered)
            setVector(irq.vector, APIC_IRR, true)
            return 1
        case APIC_DM_REMRD:
            pvUnhalted = true
            return 1
        case APIC_DM_SMI:
            return 0  // No SMM: kvm_inject_smi fails.
        case APIC_DM_NMI:
            nmiQueued += 1
            return 1
        case APIC_DM_INIT:
            guard !irq.levelTriggered || irq.level else { return 0 }
            // Only INIT and SIPI are pending events: INIT replaces a SIPI.
            pendingINIT = true
            pendingSIPI = false
            return 1
        case APIC_DM_STARTUP:
            sipiVector = irq.vector
            pendingSIPI = true
            return 1
        default:
            // ExtINT is taken through LINT0 (kvm_apic_accept_pic_intr), not as a message.
            return 0
        }
    }

    /// kvm_apic_local_deliver: the interrupt an LVT entry describes, unless masked.
    mutating func localDeliver(_ lvt: Int) -> Int32 {
        let entry = reg(lvt)
        guard hwEnabled, entry & APIC_LVT_MASKED == 0 else { return 0 }
        return acceptIRQ(LAPICIRQ(vector: UInt8(entry & APIC_VECTOR_MASK), deliveryMode: entry & APIC_MODE_MASK,
                                  logicalDestination: false, levelTriggered: entry & APIC_LVT_LEVEL_TRIGGER != 0,
                                  destination: 0))
    }

    // MARK: Destinations

    /// kvm_apic_match_physical_addr (xAPIC).
    func matchPhysical(_ mda: UInt32) -> Bool {
        if mda == APIC_BROADCAST { return true }
        return mda == xapicID
    }

    /// kvm_apic_match_logical_addr (xAPIC): flat or cluster model by DFR.
    func matchLogical(_ mda: UInt32) -> Bool {
        if mda == APIC_BROADCAST { return true }
        let logicalID = reg(APIC_LDR) >> 24
        switch reg(APIC_DFR) {
        case APIC_DFR_FLAT: return logicalID & mda != 0
        case APIC_DFR_CLUSTER: return logicalID >> 4 == mda >> 4 && logicalID & mda & 0xF != 0
        default: return false
        }
    }

    // MARK: Register access

    /// kvm_lapic_readable_reg_mask for xAPIC mode: bit (offset >> 4).
    static let readableRegisters: UInt64 = {
        var mask: UInt64 = 0
        for offset in [APIC_ID, APIC_LVR, APIC_TASKPRI, APIC_PROCPRI, APIC_LDR, APIC_SPIV, APIC_ESR, APIC_ICR,
                       APIC_LVTT, APIC_LVTTHMR, APIC_LVTPC, APIC_LVT0, APIC_LVT1, APIC_LVTERR, APIC_TMICT,
                       APIC_TMCCT, APIC_TDCR, APIC_ARBPRI, APIC_DFR, APIC_ICR2] {
            mask |= 1 << UInt64(offset >> 4)
        }
        for i in 0..<8 {
            for base in [APIC_ISR, APIC_TMR, APIC_IRR] { mask |= 1 << UInt64((base >> 4) + i) }
        }
        return mask
    }()

    /// __apic_read.
    mutating func read(register offset: Int, now: UInt64) -> UInt32 {
        switch offset {
        case APIC_ARBPRI:
            return 0
        case APIC_TMCCT:
            return timer.mode == APIC_LVT_TIMER_TSCDEADLINE ? 0 : currentCount(now: now)
        case APIC_PROCPRI:
            updatePPR()
            return reg(offset)
        default:
            return reg(offset)
        }
    }

    /// kvm_lapic_reg_read: nil for what the access may not read (more than
    /// a register's 4 bytes, a write-only or reserved register).
    mutating func regRead(_ offset: Int, length: Int, now: UInt64) -> UInt64? {
        let alignment = offset & 0xF
        guard alignment + length <= 4, offset <= 0x3F0,
              Self.readableRegisters & (1 << UInt64(offset >> 4)) != 0 else { return nil }
        let value = UInt64(read(register: offset & ~0xF, now: now))
        let shifted = value >> UInt64(alignment * 8)
        return length >= 4 ? shifted : shifted & ((1 << UInt64(length * 8)) - 1)
    }

    /// apic_mmio_read: what a guest read at `offset` in the APIC page gives.
    mutating func mmioRead(_ offset: Int, length: Int, now: UInt64) -> UInt64 {
        // A hardware-disabled APIC's page reads as all ones (KVM_X86_QUIRK_LAPIC_MMIO_HOLE).
        guard hwEnabled else { return length >= 8 ? ~0 : (1 << UInt64(length * 8)) - 1 }
        // An unreadable register leaves the access's data as it was: zeros here.
        return regRead(offset, length: length, now: now) ?? 0
    }

    /// apic_mmio_write: only aligned 4-byte writes reach the registers.
    mutating func mmioWrite(_ offset: Int, length: Int, value: UInt32, now: UInt64) -> LAPICEffects {
        guard hwEnabled, length == 4, offset & 0xF == 0 else { return LAPICEffects() }
        return regWrite(offset & 0xFF0, value, now: now)
    }

    /// kvm_lapic_reg_write (xAPIC).
    mutating func regWrite(_ offset: Int, _ value: UInt32, now: UInt64) -> LAPICEffects {
        var effects = LAPICEffects()
        var value = value
        switch offset {
        case APIC_ID:
            effects.merge(setXAPICID(value >> 24))
        case APIC_TASKPRI:
            setTPR(value & 0xFF)
        case APIC_EOI:
            effects.eoi = setEOI()
        case APIC_LDR:
            setReg(APIC_LDR, value & APIC_LDR_MASK)
            effects.mapDirty = true
        case APIC_DFR:
            setReg(APIC_DFR, value | 0x0FFF_FFFF)
            effects.mapDirty = true
        case APIC_SPIV:
            effects.merge(setSPIV(value & 0x3FF))
            if value & APIC_SPIV_APIC_ENABLED == 0 {
                for i in 0..<KVM_APIC_NR_LVT_ENTRIES { setReg(APIC_LVTx(i), reg(APIC_LVTx(i)) | APIC_LVT_MASKED) }
                updateLVTT()
                timer.pending = 0
            }
        case APIC_ICR:
            // No delay here: the message goes at once, never busy.
            value &= ~APIC_ICR_BUSY
            effects.ipi = icrToIRQ(value, reg(APIC_ICR2))
            setReg(APIC_ICR, value)
        case APIC_ICR2:
            setReg(APIC_ICR2, value & 0xFF00_0000)
        case APIC_LVT0, APIC_LVTTHMR, APIC_LVTPC, APIC_LVT1, APIC_LVTERR:
            if offset == APIC_LVT0 { manageNMIWatchdog(value) }
            if !swEnabled { value |= APIC_LVT_MASKED }
            value &= apic_lvt_mask[(offset - APIC_LVTT) >> 4]
            setReg(offset, value)
        case APIC_LVTT:
            if !swEnabled { value |= APIC_LVT_MASKED }
            value &= apic_lvt_mask[LVT_TIMER] | timer.modeMask
            setReg(APIC_LVTT, value)
            updateLVTT()
        case APIC_TMICT:
            guard timer.mode != APIC_LVT_TIMER_TSCDEADLINE else { break }
            cancelTimer()
            setReg(APIC_TMICT, value)
            startTimer(countRegister: APIC_TMICT, now: now)
        case APIC_TDCR:
            let oldDivisor = divideCount
            setReg(APIC_TDCR, value & 0xB)
            updateDivideCount()
            if divideCount != oldDivisor && timer.period != 0 {
                updateTargetExpiration(oldDivisor: oldDivisor, now: now)
                restartTimer(now: now)
            }
        default:
            // ESR writes only clear what KVM never sets; the rest is
            // reserved, read-only, or x2APIC's (SELF_IPI).
            break
        }
        return effects
    }

    /// kvm_icr_to_lapic_irq (xAPIC: the destination is ICR2's top byte).
    func icrToIRQ(_ low: UInt32, _ high: UInt32) -> LAPICIRQ {
        LAPICIRQ(vector: UInt8(low & APIC_VECTOR_MASK), deliveryMode: low & APIC_MODE_MASK,
                 logicalDestination: low & APIC_DEST_LOGICAL != 0, level: low & APIC_INT_ASSERT != 0,
                 levelTriggered: low & APIC_INT_LEVELTRIG != 0, shorthand: low & APIC_SHORT_MASK,
                 destination: high >> 24)
    }

    /// apic_set_eoi: ends the highest vector in service, for the IOAPIC to
    /// hear of it (nil when nothing was in service).
    mutating func setEOI() -> (vector: UInt8, levelTriggered: Bool)? {
        guard let vector = highestISR() else { return nil }
        clearISR(vector)
        updatePPR()
        return (vector, testVector(vector, APIC_TMR))
    }

    // MARK: Timer

    mutating func updateDivideCount() {
        let tdcr = reg(APIC_TDCR) & 0xF
        let shift = ((tdcr & 0x3) | ((tdcr & 0x8) >> 1)) + 1
        divideCount = 1 << (shift & 7)
    }

    func ticksToNanoseconds(_ ticks: UInt32) -> UInt64 {
        UInt64(ticks) * apicBusCycleNanoseconds * UInt64(divideCount)
    }

    mutating func limitPeriodicTimerFrequency() {
        if timer.mode == APIC_LVT_TIMER_PERIODIC && timer.period != 0 && timer.period < minimumTimerPeriodNanoseconds {
            timer.period = minimumTimerPeriodNanoseconds
        }
    }

    mutating func cancelTimer() {
        timer.armed = false
        timer.pending = 0
    }

    /// apic_update_lvtt: the mode follows the LVT; leaving or entering
    /// TSC-deadline mode stops the timer.
    mutating func updateLVTT() {
        let mode = reg(APIC_LVTT) & timer.modeMask
        guard timer.mode != mode else { return }
        if (timer.mode == APIC_LVT_TIMER_TSCDEADLINE) != (mode == APIC_LVT_TIMER_TSCDEADLINE) {
            cancelTimer()
            setReg(APIC_TMICT, 0)
            timer.period = 0
            timer.tscDeadline = 0
        }
        timer.mode = mode
        limitPeriodicTimerFrequency()
    }

    /// apic_get_tmcct: the count left in this period.
    func currentCount(now: UInt64) -> UInt32 {
        guard reg(APIC_TMICT) != 0, timer.period != 0 else { return 0 }
        let remaining = timer.targetExpiration > now ? timer.targetExpiration - now : 0
        return UInt32(truncatingIfNeeded: (remaining % timer.period) / (apicBusCycleNanoseconds * UInt64(divideCount)))
    }

    /// set_target_expiration: a count loaded into `countRegister` (TMICT,
    /// or TMCCT when KVM_SET_LAPIC restores a running timer).
    mutating func setTargetExpiration(countRegister: Int, now: UInt64) -> Bool {
        timer.period = ticksToNanoseconds(reg(APIC_TMICT))
        guard timer.period != 0 else {
            timer.tscDeadline = 0
            return false
        }
        limitPeriodicTimerFrequency()
        var deadline = timer.period
        if countRegister != APIC_TMICT {
            deadline = ticksToNanoseconds(reg(countRegister))
            if deadline == 0 {
                deadline = timer.mode == APIC_LVT_TIMER_PERIODIC ? timer.period : 0
            } else if deadline > timer.period {
                setReg(countRegister, 0)
                deadline = timer.period
            }
        }
        timer.targetExpiration = now + deadline
        return true
    }

    /// advance_periodic_target_expiration: the next period, never in the past.
    mutating func advancePeriodicTargetExpiration(now: UInt64) {
        timer.targetExpiration &+= timer.period
        if timer.targetExpiration < now { timer.targetExpiration = now }
    }

    /// update_target_expiration: a new divisor scales what is left of the period.
    mutating func updateTargetExpiration(oldDivisor: UInt32, now: UInt64) {
        timer.period = ticksToNanoseconds(reg(APIC_TMICT))
        limitPeriodicTimerFrequency()
        let remaining = timer.targetExpiration > now ? timer.targetExpiration - now : 0
        let scaled = remaining.multipliedFullWidth(by: UInt64(divideCount))
        timer.targetExpiration = now + UInt64(oldDivisor).dividingFullWidth(scaled).quotient
    }

    /// apic_timer_expired: one expiration waits to be delivered.
    mutating func timerExpired() {
        if timer.pending > 0 { return }
        timer.pending = 1
    }

    /// __start_apic_timer.
    mutating func startTimer(countRegister: Int, now: UInt64) {
        timer.pending = 0
        if timer.mode != APIC_LVT_TIMER_TSCDEADLINE && !setTargetExpiration(countRegister: countRegister, now: now) {
            return
        }
        restartTimer(now: now)
    }

    /// restart_apic_timer / start_sw_timer: start_sw_period for the
    /// counting modes; TSC-deadline mode is armed by `startTSCDeadline`.
    mutating func restartTimer(now: UInt64) {
        if timer.mode != APIC_LVT_TIMER_PERIODIC && timer.pending > 0 { return }
        guard timer.mode != APIC_LVT_TIMER_TSCDEADLINE else {
            timer.armed = timer.tscDeadline != 0
            return
        }
        guard timer.period != 0 else { return }
        if now > timer.targetExpiration {
            timerExpired()
            if timer.mode == APIC_LVT_TIMER_ONESHOT { return }
            advancePeriodicTargetExpiration(now: now)
        }
        timer.armed = true
    }

    /// start_sw_tscdeadline: the deadline as host time, or at once when it has passed.
    mutating func startTSCDeadline(tsc: TimeStampCounter, now: UInt64) {
        timer.pending = 0
        timer.armed = false
        guard timer.tscDeadline != 0 else { return }
        let guestTSC = tsc.value(atHostNanoseconds: now)
        if timer.tscDeadline > guestTSC {
            let wait = tsc.nanoseconds(cycles: timer.tscDeadline - guestTSC)
            timer.tscDeadlineExpiration = now &+ wait < now ? .max : now + wait
            timer.armed = true
        } else {
            timerExpired()
        }
    }

    /// kvm_set_lapic_tscdeadline_msr: only in TSC-deadline mode.
    mutating func setTSCDeadline(_ value: UInt64, tsc: TimeStampCounter, now: UInt64) {
        guard hwEnabled, timer.mode == APIC_LVT_TIMER_TSCDEADLINE else { return }
        timer.tscDeadline = value
        startTSCDeadline(tsc: tsc, now: now)
    }

    /// kvm_get_lapic_tscdeadline_msr.
    var tscDeadlineMSR: UInt64 {
        hwEnabled && timer.mode == APIC_LVT_TIMER_TSCDEADLINE ? timer.tscDeadline : 0
    }

    /// When the running timer next expires, in host time (nil when none runs).
    var nextExpiration: UInt64? {
        guard timer.armed else { return nil }
        return timer.mode == APIC_LVT_TIMER_TSCDEADLINE ? timer.tscDeadlineExpiration : timer.targetExpiration
    }

    /// apic_timer_fn, run late on the vCPU's thread: the host timer has
    /// expired by `now`; a periodic timer starts its next period.
    mutating func timerFunction(now: UInt64) {
        guard let expiration = nextExpiration, now >= expiration else { return }
        timerExpired()
        if timer.mode == APIC_LVT_TIMER_PERIODIC && timer.period != 0 {
            advancePeriodicTargetExpiration(now: now)
        } else {
            timer.armed = false
        }
    }

    /// kvm_inject_apic_timer_irqs: an expiration goes into IRR through the LVT.
    mutating func injectPendingTimerIRQs() {
        guard timer.pending > 0 else { return }
        _ = localDeliver(APIC_LVTT)
        if timer.mode == APIC_LVT_TIMER_TSCDEADLINE {
            timer.tscDeadline = 0
        } else if timer.mode == APIC_LVT_TIMER_ONESHOT {
            timer.tscDeadline = 0
            timer.targetExpiration = 0
        }
        timer.pending = 0
    }

    // MARK: KVM_GET_LAPIC and KVM_SET_LAPIC

    /// kvm_apic_get_state: the page, with the current count computed.
    mutating func getState(now: UInt64) -> [UInt8] {
        var page = regs
        page[APIC_TMCCT >> 2] = read(register: APIC_TMCCT, now: now)
        return page.withUnsafeBytes { Array($0) }
    }

    /// kvm_apic_set_state: the page goes in as given, then the version,
    /// the priorities and the timer are made consistent with it.
    mutating func setState(_ bytes: [UInt8], tsc: TimeStampCounter, now: UInt64) -> LAPICEffects {
        var effects = LAPICEffects()
        let words = bytes.withUnsafeBytes { raw in (0..<256).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self) } }
        effects.merge(setSPIV(UInt32(littleEndian: words[APIC_SPIV >> 2])))
        regs = words.map { UInt32(littleEndian: $0) }
        effects.mapDirty = true
        setReg(APIC_LVR, APIC_VERSION | UInt32(KVM_APIC_NR_LVT_ENTRIES - 1) << 16)
        updatePPR()
        cancelTimer()
        updateLVTT()
        manageNMIWatchdog(reg(APIC_LVT0))
        updateDivideCount()
        if timer.mode == APIC_LVT_TIMER_TSCDEADLINE {
            startTSCDeadline(tsc: tsc, now: now)
        } else {
            startTimer(countRegister: APIC_TMCCT, now: now)
        }
        setReg(APIC_TMCCT, 0)
        refreshISRCache()
        arbitrationPriority = 0
        return effects
    }
}

/// One vCPU's local APIC: the state behind its lock, and what lets other
/// threads reach the vCPU (its wake-up eventfd).
final class LocalAPIC: Sendable {
    let vcpuID: UInt32
    /// The vCPU's index in creation order (`vcpu->vcpu_idx`).
    let index: Int
    let state: Mutex<KVMLapic>
    /// Signalled when something is delivered: a vCPU blocked in KVM_RUN
    /// polls it (kvm_vcpu_kick of a blocked vCPU).
    let wakeup: Int32
    /// The APIC page's base address, read on every MMIO exit without the lock.
    private let base = Atomic<UInt64>(APIC_DEFAULT_PHYS_BASE)
    /// When the timer next expires (host ns), UInt64.max for never: the
    /// vCPU's thread looks at it between slices without the lock.
    private let expiration = Atomic<UInt64>(.max)

    init(vcpuID: UInt32, index: Int) {
        self.vcpuID = vcpuID
        self.index = index
        state = Mutex(KVMLapic(vcpuID: vcpuID))
        wakeup = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
    }

    deinit {
        if wakeup >= 0 { _ = Glibc.close(wakeup) }
    }

    /// Runs `body` on the state, then publishes what the vCPU's thread reads without the lock.
    func withState<T>(_ body: (inout KVMLapic) -> T) -> T {
        state.withLock { lapic in
            let result = body(&lapic)
            base.store(lapic.baseAddress, ordering: .relaxed)
            // An expiration not yet delivered (a deadline already past when
            // set) is due at once.
            expiration.store(lapic.timer.pending > 0 ? 0 : lapic.nextExpiration ?? .max, ordering: .relaxed)
            return result
        }
    }

    /// apic_mmio_in_range.
    func handlesMMIO(_ address: UInt64) -> Bool {
        let start = base.load(ordering: .relaxed)
        return address >= start && address - start < LAPIC_MMIO_LENGTH
    }

    var mmioBase: UInt64 { base.load(ordering: .relaxed) }

    /// When the timer next expires or has an expiration to deliver (0),
    /// UInt64.max if neither.
    var nextTimerExpiration: UInt64 { expiration.load(ordering: .relaxed) }

    /// kvm_vcpu_kick: wakes the vCPU if it is blocked.
    func kick() {
        if wakeup >= 0 { signalEventFD(wakeup) }
    }

    /// kvm_apic_set_irq from a message: accepted into the APIC, the vCPU kicked.
    func setIRQ(_ irq: LAPICIRQ) -> Int32 {
        let result = withState { $0.acceptIRQ(irq) }
        if result != 0 { kick() }
        return result
    }
}
