import CLinuxKVM

// The in-kernel 82093 IOAPIC, after the kernel's arch/x86/kvm/ioapic.c: 24
// pins, the IOREGSEL/IOWIN window in its MMIO page, the redirection table
// with remote IRR, and KVM_GET/SET_IRQCHIP's kvm_ioapic_state.

let IOAPIC_NUM_PINS = 24
let IOAPIC_DEFAULT_BASE_ADDRESS: UInt64 = 0xFEC0_0000
/// IOAPIC_MEM_LENGTH: the part of the page the IOAPIC answers.
let IOAPIC_MEM_LENGTH: UInt64 = 0x100
let IOAPIC_VERSION_ID: UInt32 = 0x11
/// RTC_GSI: the pin whose coalescing KVM_IRQ_LINE_STATUS tracks through EOIs.
let RTC_GSI = 8

/// One interrupt message an IOAPIC or an MSI sends to the local APICs
/// (`struct kvm_lapic_irq`).
public struct APICMessage: Hashable, Sendable {
    public var vector: UInt8
    /// Fixed 0, lowest priority 1, SMI 2, NMI 4, INIT 5, ExtINT 7.
    public var deliveryMode: UInt8
    public var logicalDestination: Bool
    public var levelTriggered: Bool
    public var destination: UInt32
}

/// Where the irqchip's output goes: the vCPUs' local APICs, and the PIC's
/// INTR to the LINT0 pins that take it (SoftAPICBus; tests record it).
public protocol LocalAPICBus: AnyObject, Sendable {
    /// kvm_irq_delivery_to_apic: how many LAPICs accepted the message, 0
    /// when those addressed refused it, -1 when none was addressed.
    func deliver(_ message: APICMessage) -> Int32
    /// The PIC's INTR output changed (pic_irq_request).
    func picOutputChanged(_ level: Bool)
    /// Whether some vCPU's LAPIC takes the PIC's interrupts through LINT0
    /// (kvm_apic_accept_pic_intr), which decides what a PIC reset ends.
    var acceptsPICInterrupts: Bool { get }
}

/// A redirection table entry (`union kvm_ioapic_redirect_entry`), as its 64 bits.
struct RedirectionEntry: Equatable, Sendable {
    var bits: UInt64

    var vector: UInt8 { UInt8(truncatingIfNeeded: bits) }
    var deliveryMode: UInt8 { UInt8((bits >> 8) & 7) }
    var logicalDestination: Bool { bits & (1 << 11) != 0 }
    var levelTriggered: Bool { bits & (1 << 15) != 0 }
    var masked: Bool {
        get { bits & (1 << 16) != 0 }
        set { set(16, newValue) }
    }
    var remoteIRR: Bool {
        get { bits & (1 << 14) != 0 }
        set { set(14, newValue) }
    }
    var deliveryStatus: Bool {
        get { bits & (1 << 12) != 0 }
        set { set(12, newValue) }
    }
    var destination: UInt8 { UInt8(truncatingIfNeeded: bits >> 56) }

    private mutating func set(_ bit: UInt64, _ value: Bool) {
        if value { bits |= 1 << bit } else { bits &= ~(1 << bit) }
    }
}

/// The IOAPIC (`struct kvm_ioapic`). Its first fields are, in order, those
/// of `struct kvm_ioapic_state`.
struct IOAPIC: Sendable {
    var baseAddress = IOAPIC_DEFAULT_BASE_ADDRESS
    var ioregsel: UInt32 = 0
    var id: UInt32 = 0
    var irr: UInt32 = 0
    var redirectionTable = [RedirectionEntry](repeating: RedirectionEntry(bits: 1 << 16), count: IOAPIC_NUM_PINS)
    /// Edge-triggered pins delivered since they were raised: not pending.
    var irrDelivered: UInt32 = 0
    var irqStates = [UInt64](repeating: 0, count: IOAPIC_NUM_PINS)
    /// LAPICs that still owe an EOI for the RTC's interrupt (rtc_status.pending_eoi).
    var rtcPendingEOI: Int32 = 0
    /// Pins whose level interrupt was EOIed since the caller last emptied this.
    var acked: [Int] = []
    /// Pins whose irqfd resampler must be told to check its device, since
    /// the caller last emptied this (kvm_notify_irqfd_resampler).
    var resampleNotified: [Int] = []
    /// Pins whose mask bit a guest write changed, and to what, since the
    /// caller last emptied this (kvm_fire_mask_notifiers).
    var maskChanges: [(pin: Int, masked: Bool)] = []

    // MARK: kvm_ioapic_state

    static let stateSize = 24 + 8 * IOAPIC_NUM_PINS

    /// kvm_get_ioapic: the registers, with delivered edges not shown as pending.
    func stateBytes() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.stateSize)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } }
        }
        put(baseAddress, at: 0)
        put(ioregsel, at: 8)
        put(id, at: 12)
        put(irr & ~irrDelivered, at: 16)
        for (pin, entry) in redirectionTable.enumerated() { put(entry.bits, at: 24 + 8 * pin) }
        return bytes
    }

    /// kvm_set_ioapic: loads the registers, then raises the pins the state
    /// says are pending, as if their lines had just gone high.
    mutating func load(_ bytes: [UInt8], bus: LocalAPICBus) {
        func get<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
            bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
        }
        baseAddress = get(UInt64.self, at: 0)
        ioregsel = get(UInt32.self, at: 8)
        id = get(UInt32.self, at: 12)
        let pending = get(UInt32.self, at: 16)
        for pin in 0..<IOAPIC_NUM_PINS { redirectionTable[pin].bits = get(UInt64.self, at: 24 + 8 * pin) }
        irr = 0
        irrDelivered = 0
        rtcPendingEOI = 0
        for pin in 0..<IOAPIC_NUM_PINS where pending & (1 << pin) != 0 {
            _ = setIRQ(pin, level: true, lineStatus: true, bus: bus)
        }
    }

    // MARK: Lines

    /// kvm_ioapic_set_irq: `pin` raised or lowered by `source`.
    mutating func setIRQ(_ pin: Int, source: Int, level: Bool, lineStatus: Bool, bus: LocalAPICBus) -> Int32 {
        let line = lineState(&irqStates[pin], source: source, level: level)
        return setIRQ(pin, level: line, lineStatus: lineStatus, bus: bus)
    }

    /// ioapic_set_irq: 0 for an interrupt coalesced with one not yet taken
    /// (an undelivered edge, or a level awaiting EOI), else what delivery gave.
    private mutating func setIRQ(_ pin: Int, level: Bool, lineStatus: Bool, bus: LocalAPICBus) -> Int32 {
        let mask = UInt32(1) << pin
        guard level else {
            irr &= ~mask
            return 1
        }
        let edge = !redirectionTable[pin].levelTriggered
        // KVM_IRQ_LINE_STATUS reports an RTC interrupt still unacknowledged
        // as coalesced, for guests that count ticks.
        if pin == RTC_GSI && lineStatus && rtcPendingEOI > 0 { return 0 }
        let old = irr
        irr |= mask
        if edge {
            irrDelivered &= ~mask
            if old == irr { return 0 }
        }
        return service(pin, lineStatus: lineStatus, bus: bus)
    }

    /// ioapic_service: sends the pin's message unless masked or awaiting EOI.
    mutating func service(_ pin: Int, lineStatus: Bool, bus: LocalAPICBus) -> Int32 {
        let entry = redirectionTable[pin]
        if entry.masked || (entry.levelTriggered && entry.remoteIRR) { return -1 }
        let message = APICMessage(
            vector: entry.vector, deliveryMode: entry.deliveryMode, logicalDestination: entry.logicalDestination,
            levelTriggered: entry.levelTriggered, destination: UInt32(entry.destination))
        if !entry.levelTriggered { irrDelivered |= 1 << pin }
        let ret = bus.deliver(message)
        if pin == RTC_GSI && lineStatus { rtcPendingEOI = max(ret, 0) }
        if ret != 0 && entry.levelTriggered { redirectionTable[pin].remoteIRR = true }
        return ret
    }

    /// kvm_ioapic_update_eoi: a LAPIC ended `vector`. Its pins' ack
    /// notifiers hear of it; when the LAPIC had it level-triggered, level
    /// pins with that vector drop remote IRR and, if their line is still
    /// high, deliver again.
    mutating func endOfInterrupt(vector: UInt8, levelTriggered: Bool = true, bus: LocalAPICBus) {
        for pin in pins(vector: vector) {
            acked.append(pin)
            endOfInterrupt(pin: pin, levelTriggered: levelTriggered, bus: bus)
        }
    }

    /// The pins whose entry has `vector`.
    func pins(vector: UInt8) -> [Int] {
        (0..<IOAPIC_NUM_PINS).filter { redirectionTable[$0].vector == vector }
    }

    /// kvm_ioapic_update_eoi_one, after the pin's ack notifiers (which may
    /// have lowered its line): remote IRR ends, and a line still high delivers again.
    mutating func endOfInterrupt(pin: Int, levelTriggered: Bool, bus: LocalAPICBus) {
        if pin == RTC_GSI && rtcPendingEOI > 0 { rtcPendingEOI -= 1 }
        guard levelTriggered && redirectionTable[pin].levelTriggered else { return }
        redirectionTable[pin].remoteIRR = false
        if !redirectionTable[pin].masked && irr & (1 << pin) != 0 {
            _ = service(pin, lineStatus: false, bus: bus)
        }
    }

    // MARK: MMIO

    /// Whether `address` is in the IOAPIC's registers (ioapic_in_range).
    func handles(address: UInt64) -> Bool {
        address >= baseAddress && address < baseAddress + IOAPIC_MEM_LENGTH
    }

    /// ioapic_mmio_read: IOREGSEL at 0x00, IOWIN at 0x10, 0 elsewhere.
    func read(address: UInt64, length: Int) -> UInt64 {
        let result: UInt32
        switch address & 0xFF {
        case 0x00: result = ioregsel
        case 0x10: result = readIndirect()
        default: result = 0
        }
        switch length {
        case 8: return UInt64(result)
        case 1: return UInt64(result & 0xFF)
        case 2: return UInt64(result & 0xFFFF)
        default: return UInt64(result)
        }
    }

    /// ioapic_mmio_write: other lengths than 1, 2, 4 and 8 are ignored; an
    /// 8-byte write takes its low half.
    mutating func write(address: UInt64, length: Int, value: UInt64, bus: LocalAPICBus,
                        hasResampler: (Int) -> Bool = { _ in false }) {
        let data: UInt32
        switch length {
        case 4, 8: data = UInt32(truncatingIfNeeded: value)
        case 2: data = UInt32(UInt16(truncatingIfNeeded: value))
        case 1: data = UInt32(UInt8(truncatingIfNeeded: value))
        default: return
        }
        switch address & 0xFF {
        case 0x00: ioregsel = data & 0xFF  // An 8-bit register.
        case 0x10: writeIndirect(data, bus: bus, hasResampler: hasResampler)
        default: break
        }
    }

    func readIndirect() -> UInt32 {
        switch ioregsel {
        case 0x01: return (UInt32(IOAPIC_NUM_PINS - 1) << 16) | IOAPIC_VERSION_ID
        case 0x00, 0x02: return (id & 0xF) << 24
        default:
            let index = (ioregsel &- 0x10) >> 1
            let entry = index < IOAPIC_NUM_PINS ? redirectionTable[Int(index)].bits : ~0
            return UInt32(truncatingIfNeeded: ioregsel & 1 != 0 ? entry >> 32 : entry)
        }
    }

    mutating func writeIndirect(_ value: UInt32, bus: LocalAPICBus, hasResampler: (Int) -> Bool = { _ in false }) {
        switch ioregsel {
        case 0x01, 0x02: return  // Version and arbitration id are read-only.
        case 0x00: id = (value >> 24) & 0xF
        default:
            let index = (ioregsel &- 0x10) >> 1
            guard index < IOAPIC_NUM_PINS else { return }
            let pin = Int(index)
            var entry = redirectionTable[pin]
            let old = entry
            if ioregsel & 1 != 0 {
                entry.bits = entry.bits & 0xFFFF_FFFF | UInt64(value) << 32
            } else {
                entry.bits = entry.bits & ~0xFFFF_FFFF | UInt64(value)
            }
            entry.remoteIRR = old.remoteIRR
            entry.deliveryStatus = old.deliveryStatus
            // Guests (Linux, Xen) clear a stuck remote IRR by switching the pin to edge.
            if !entry.levelTriggered { entry.remoteIRR = false }
            redirectionTable[pin] = entry
            if old.masked != entry.masked { maskChanges.append((pin, entry.masked)) }
            if entry.levelTriggered && irr & (1 << pin) != 0 && !entry.masked && !entry.remoteIRR {
                // The line may have dropped while the pin was masked (a
                // oneshot handler acks its device before unmasking): a
                // resampled irqfd is asked to raise it again if still
                // pending, rather than injecting a stale request.
                if hasResampler(pin) {
                    irr &= ~(1 << pin)
                    resampleNotified.append(pin)
                } else {
                    _ = service(pin, lineStatus: false, bus: bus)
                }
            }
        }
    }
}
