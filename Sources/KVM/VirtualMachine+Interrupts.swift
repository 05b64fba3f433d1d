import CLinuxKVM
import GuestMemory
import KVMPlatform
import Synchronization
import SystemPackage

// MARK: Value types

/// One of the in-kernel interrupt controllers KVM_CREATE_IRQCHIP makes on
/// x86, as routing entries and KVM_GET_IRQCHIP name it (`KVM_IRQCHIP_*`).
/// A raw value outside the three is kept, so that bad input can reach the
/// kernel and be rejected there.
public struct Irqchip: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The master 8259 PIC, pins 0-7 (`KVM_IRQCHIP_PIC_MASTER`).
    public static let picMaster = Irqchip(rawValue: UInt32(KVM_IRQCHIP_PIC_MASTER))
    /// The slave 8259 PIC, pins 0-7, GSIs 8-15 (`KVM_IRQCHIP_PIC_SLAVE`).
    public static let picSlave = Irqchip(rawValue: UInt32(KVM_IRQCHIP_PIC_SLAVE))
    /// The IOAPIC, pins 0-23 (`KVM_IRQCHIP_IOAPIC`).
    public static let ioapic = Irqchip(rawValue: UInt32(KVM_IRQCHIP_IOAPIC))

    public var description: String {
        switch self {
        case .picMaster: "PIC master"
        case .picSlave: "PIC slave"
        case .ioapic: "IOAPIC"
        default: "irqchip \(rawValue)"
        }
    }
}

/// How the in-kernel PIT is created (`struct kvm_pit_config.flags`).
public struct PITConfig: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Emulate port 0x61's speaker bits as a dummy device, so the guest's
    /// accesses to it do not exit (`KVM_PIT_SPEAKER_DUMMY`).
    public static let speakerDummy = PITConfig(rawValue: UInt32(KVM_PIT_SPEAKER_DUMMY))
}

/// What became of an interrupt raised with KVM_IRQ_LINE_STATUS (`kvm_irq_level.status`).
public enum IRQLineStatus: Hashable, Sendable {
    /// The interrupt was ignored: masked, or not delivered for another reason (status < 0).
    case ignored(Int32)
    /// The interrupt was coalesced with one still pending (status 0).
    case coalesced
    /// The interrupt was delivered to this many vCPUs (status > 0).
    case delivered(Int32)

    init(status: Int32) {
        self = status < 0 ? .ignored(status) : status == 0 ? .coalesced : .delivered(status)
    }
}

/// `struct kvm_msi.flags`.
public struct MSIFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The device id field is valid (`KVM_MSI_VALID_DEVID`).
    public static let validDeviceID = MSIFlags(rawValue: KVM_MSI_VALID_DEVID)
}

/// One entry of the GSI routing table (`struct kvm_irq_routing_entry`): what
/// an interrupt on `gsi` (from KVM_IRQ_LINE or an irqfd) is delivered as.
public struct RoutingEntry: Hashable, Sendable {
    /// Where the GSI goes.
    public enum Route: Hashable, Sendable {
        /// A pin of an in-kernel interrupt controller (`KVM_IRQ_ROUTING_IRQCHIP`).
        case irqchip(Irqchip, pin: UInt32)
        /// A message-signalled interrupt (`KVM_IRQ_ROUTING_MSI`); a device id
        /// sets `KVM_MSI_VALID_DEVID` in the entry's flags.
        case msi(addressLow: UInt32, addressHigh: UInt32, data: UInt32, deviceID: UInt32?)
        /// An entry of a type not modelled above (S390 adapter, Hyper-V SINT,
        /// Xen event channel, or an invalid one): the type, the flags and up
        /// to 8 words of the entry's union, as the kernel reads them.
        case raw(type: UInt32, flags: UInt32, words: [UInt32])
    }

    public var gsi: UInt32
    public var route: Route

    public init(gsi: UInt32, route: Route) {
        self.gsi = gsi
        self.route = route
    }

    /// A GSI routed to `pin` of `chip`.
    public static func irqchip(gsi: UInt32, _ chip: Irqchip, pin: UInt32) -> RoutingEntry {
        RoutingEntry(gsi: gsi, route: .irqchip(chip, pin: pin))
    }

    /// A GSI routed to an MSI with the 64-bit `address`.
    public static func msi(gsi: UInt32, address: UInt64, data: UInt32, deviceID: UInt32? = nil) -> RoutingEntry {
        RoutingEntry(gsi: gsi, route: .msi(addressLow: UInt32(truncatingIfNeeded: address),
                                           addressHigh: UInt32(truncatingIfNeeded: address >> 32),
                                           data: data, deviceID: deviceID))
    }

    var kernelEntry: kvm_irq_routing_entry {
        var entry = kvm_irq_routing_entry()
        entry.gsi = gsi
        switch route {
        case .irqchip(let chip, let pin):
            entry.type = UInt32(KVM_IRQ_ROUTING_IRQCHIP)
            entry.u.irqchip = kvm_irq_routing_irqchip(irqchip: chip.rawValue, pin: pin)
        case .msi(let low, let high, let data, let deviceID):
            entry.type = UInt32(KVM_IRQ_ROUTING_MSI)
            entry.u.msi.address_lo = low
            entry.u.msi.address_hi = high
            entry.u.msi.data = data
            if let deviceID {
                entry.flags = KVM_MSI_VALID_DEVID
                entry.u.msi.devid = deviceID
            }
        case .raw(let type, let flags, let words):
            entry.type = type
            entry.flags = flags
            withUnsafeMutableBytes(of: &entry.u) { union in
                for (index, word) in words.prefix(8).enumerated() {
                    union.storeBytes(of: word, toByteOffset: index * 4, as: UInt32.self)
                }
            }
        }
        return entry
    }
}

/// The address space an ioeventfd or coalesced zone watches.
public enum IOSpace: Hashable, Sendable {
    /// Port I/O (`in`/`out`).
    case pio
    /// Memory-mapped I/O: guest-physical addresses no memory slot covers.
    case mmio
}

/// One guest write the kernel queued in the coalesced MMIO ring instead of
/// exiting (`struct kvm_coalesced_mmio`).
public struct CoalescedWrite: Hashable, Sendable {
    /// The guest-physical address, or the port for a PIO zone.
    public let address: UInt64
    /// Bytes written, 1 to 8.
    public let length: UInt32
    /// Whether the write was port I/O in a zone registered for PIO.
    public let isPIO: Bool
    /// The first `length` bytes of the data, little-endian.
    public let value: UInt64

    public init(address: UInt64, length: UInt32, isPIO: Bool, value: UInt64) {
        self.address = address
        self.length = length
        self.isPIO = isPIO
        self.value = value
    }
}

/// The state of one in-kernel interrupt controller, as KVM_GET_IRQCHIP
/// returns it: the 512 bytes of `kvm_irqchip.chip`, which hold a `struct
/// kvm_pic_state` for either PIC and a `struct kvm_ioapic_state` for the
/// IOAPIC. Kept as bytes so a snapshot round-trips exactly.
public struct IrqchipState: Hashable, Sendable {
    public static let byteCount = 512

    public var chip: Irqchip
    /// Exactly `byteCount` bytes.
    public var bytes: [UInt8]

    public init(chip: Irqchip, bytes: [UInt8]) {
        self.chip = chip
        self.bytes = bytes
    }

    /// A PIC's interrupt mask register (`kvm_pic_state.imr`, byte 2).
    public var picInterruptMask: UInt8 {
        get { bytes[2] }
        set { bytes[2] = newValue }
    }

    // `kvm_ioapic_state.redirtbl` is an array of unions with bitfields, which
    // Swift does not import: its offset is after base_address, ioregsel, id,
    // irr and pad.
    private static let ioapicRedirectionTableOffset = 24

    /// An IOAPIC's redirection table entry for `pin` (0-23), as the 64-bit register.
    public func ioapicRedirection(pin: Int) -> UInt64 {
        let offset = Self.ioapicRedirectionTableOffset + pin * 8
        return bytes[offset..<offset + 8].reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Sets an IOAPIC's redirection table entry for `pin` (0-23).
    public mutating func setIOAPICRedirection(pin: Int, _ value: UInt64) {
        let offset = Self.ioapicRedirectionTableOffset + pin * 8
        for index in 0..<8 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))) }
    }
}

/// One counter of the in-kernel 8254 PIT (`struct kvm_pit_channel_state`).
public struct PITChannelState: Hashable, Sendable {
    /// The reload value; 65536 stands for a programmed 0.
    public var count: UInt32
    public var latchedCount: UInt16
    public var countLatched: UInt8
    public var statusLatched: UInt8
    public var status: UInt8
    public var readState: UInt8
    public var writeState: UInt8
    public var writeLatch: UInt8
    public var readWriteMode: UInt8
    /// The counter mode, 0-5.
    public var mode: UInt8
    public var bcd: UInt8
    public var gate: UInt8
    /// Host time (ns, kernel monotonic clock) at which `count` was loaded.
    public var countLoadTime: Int64

    init(_ channel: kvm_pit_channel_state) {
        count = channel.count
        latchedCount = channel.latched_count
        countLatched = channel.count_latched
        statusLatched = channel.status_latched
        status = channel.status
        readState = channel.read_state
        writeState = channel.write_state
        writeLatch = channel.write_latch
        readWriteMode = channel.rw_mode
        mode = channel.mode
        bcd = channel.bcd
        gate = channel.gate
        countLoadTime = channel.count_load_time
    }

    var kernelChannel: kvm_pit_channel_state {
        kvm_pit_channel_state(
            count: count, latched_count: latchedCount, count_latched: countLatched,
            status_latched: statusLatched, status: status, read_state: readState,
            write_state: writeState, write_latch: writeLatch, rw_mode: readWriteMode,
            mode: mode, bcd: bcd, gate: gate, count_load_time: countLoadTime)
    }
}

/// `struct kvm_pit_state2.flags`.
public struct PITStateFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The HPET runs in legacy mode and drives the PIT's interrupt (`KVM_PIT_FLAGS_HPET_LEGACY`).
    public static let hpetLegacy = PITStateFlags(rawValue: UInt32(KVM_PIT_FLAGS_HPET_LEGACY))
    /// The speaker's data bit is on (`KVM_PIT_FLAGS_SPEAKER_DATA_ON`).
    public static let speakerDataOn = PITStateFlags(rawValue: UInt32(KVM_PIT_FLAGS_SPEAKER_DATA_ON))
}

/// The in-kernel PIT's state (`struct kvm_pit_state2`).
public struct PITState: Hashable, Sendable {
    /// Counters 0, 1 and 2.
    public var channels: [PITChannelState]
    public var flags: PITStateFlags

    init(_ state: kvm_pit_state2) {
        channels = [PITChannelState(state.channels.0), PITChannelState(state.channels.1), PITChannelState(state.channels.2)]
        flags = PITStateFlags(rawValue: state.flags)
    }
}

// MARK: Registrations the VM keeps

/// `KVM_IOEVENTFD_FLAG_*`, which the header defines as shifts of an enum Swift does not see through.
enum IOEventFDFlag {
    static let datamatch = UInt32(1) << UInt32(kvm_ioeventfd_flag_nr_datamatch)
    static let pio = UInt32(1) << UInt32(kvm_ioeventfd_flag_nr_pio)
    static let deassign = UInt32(1) << UInt32(kvm_ioeventfd_flag_nr_deassign)
}

/// What the VM keeps for its interrupt plumbing: the eventfds registered
/// with the kernel, kept alive (and their descriptor numbers kept from reuse)
/// while the kernel may signal them, and where the coalesced MMIO ring is.
struct InterruptState {
    struct IRQFDKey: Hashable {
        let descriptor: Int32
        let gsi: UInt32
    }

    struct IOEventFDKey: Hashable {
        let descriptor: Int32
        let address: UInt64
        let length: UInt32
        let space: IOSpace
        let datamatch: UInt64?
    }

    var irqfds: [IRQFDKey: (eventFD: EventFD, resample: EventFD?)] = [:]
    var ioeventfds: [IOEventFDKey: EventFD] = [:]
    /// The ring's page in a vCPU's mapping, once asked: 0 when the VM has none.
    var coalescedRingPage: Int32?
}

// MARK: Requests

extension VirtualMachine {
    // MARK: In-kernel devices

    /// Creates the in-kernel PIC pair and IOAPIC, with the default GSI
    /// routing (GSIs 0-15 to the PICs and GSIs 0-23 to the IOAPIC pins), and
    /// makes each vCPU's local APIC in-kernel. Must come before any vCPU.
    /// The ioctl is KVM_CREATE_IRQCHIP.
    public func createIrqchip() throws(KVMError) {
        try handle.call(.createIrqchip, value: 0)
    }

    /// Creates the in-kernel 8254 PIT on ports 0x40-0x43, which needs the
    /// in-kernel irqchip. The ioctl is KVM_CREATE_PIT2.
    public func createPIT(flags: PITConfig = []) throws(KVMError) {
        var config = kvm_pit_config()
        config.flags = flags.rawValue
        try handle.call(.createPIT2, &config, context: "flags 0x\(String(flags.rawValue, radix: 16))")
    }

    /// The state of one in-kernel interrupt controller. The ioctl is KVM_GET_IRQCHIP.
    public func irqchipState(_ chip: Irqchip) throws(KVMError) -> IrqchipState {
        var state = kvm_irqchip()
        state.chip_id = chip.rawValue
        try handle.call(.getIrqchip, &state, context: "\(chip)")
        let bytes = withUnsafeBytes(of: state.chip) { Array($0.prefix(IrqchipState.byteCount)) }
        return IrqchipState(chip: chip, bytes: bytes)
    }

    /// Loads the state of one in-kernel interrupt controller. The ioctl is KVM_SET_IRQCHIP.
    public func setIrqchipState(_ state: IrqchipState) throws(KVMError) {
        guard state.bytes.count == IrqchipState.byteCount else {
            throw KVMError(errno: .invalidArgument, request: .setIrqchip,
                           message: "the state has \(state.bytes.count) bytes, not \(IrqchipState.byteCount)")
        }
        var chip = kvm_irqchip()
        chip.chip_id = state.chip.rawValue
        withUnsafeMutableBytes(of: &chip.chip) { $0.copyBytes(from: state.bytes) }
        try handle.call(.setIrqchip, &chip, context: "\(state.chip)")
    }

    /// The in-kernel PIT's state. The ioctl is KVM_GET_PIT2.
    public func pitState() throws(KVMError) -> PITState {
        PITState(try handle.get(.getPIT2, kvm_pit_state2.self))
    }

    /// Loads the in-kernel PIT's state; `state` must have 3 channels. The ioctl is KVM_SET_PIT2.
    public func setPITState(_ state: PITState) throws(KVMError) {
        guard state.channels.count == 3 else {
            throw KVMError(errno: .invalidArgument, request: .setPIT2,
                           message: "the PIT has 3 channels, not \(state.channels.count)")
        }
        var kernel = kvm_pit_state2()
        kernel.channels = (state.channels[0].kernelChannel, state.channels[1].kernelChannel, state.channels[2].kernelChannel)
        kernel.flags = state.flags.rawValue
        try handle.call(.setPIT2, &kernel)
    }

    // MARK: Raising interrupts

    /// Raises (`level` true) or lowers GSI `irq` through the routing table.
    /// An edge-triggered source is raised then lowered. Needs the in-kernel
    /// irqchip (ENXIO without). The ioctl is KVM_IRQ_LINE.
    public func setIRQLine(_ irq: UInt32, level: Bool) throws(KVMError) {
        var line = kvm_irq_level()
        line.irq = irq
        line.level = level ? 1 : 0
        try handle.call(.irqLine, &line, context: "GSI \(irq) to \(level ? 1 : 0)")
    }

    /// As `setIRQLine`, and says what became of the interrupt. The ioctl is KVM_IRQ_LINE_STATUS.
    @discardableResult
    public func setIRQLineStatus(_ irq: UInt32, level: Bool) throws(KVMError) -> IRQLineStatus {
        var line = kvm_irq_level()
        line.irq = irq
        line.level = level ? 1 : 0
        try handle.call(.irqLineStatus, &line, context: "GSI \(irq) to \(level ? 1 : 0)")
        return IRQLineStatus(status: line.status)
    }

    /// Injects a message-signalled interrupt: the write of `data` to
    /// `address` a device would make. Returns > 0 when delivered, 0 when the
    /// guest blocked it. The ioctl is KVM_SIGNAL_MSI.
    @discardableResult
    public func signalMSI(address: UInt64, data: UInt32, flags: MSIFlags = [], deviceID: UInt32 = 0) throws(KVMError) -> Int32 {
        var msi = kvm_msi()
        msi.address_lo = UInt32(truncatingIfNeeded: address)
        msi.address_hi = UInt32(truncatingIfNeeded: address >> 32)
        msi.data = data
        msi.flags = flags.rawValue
        msi.devid = deviceID
        return try handle.call(.signalMSI, &msi, context: "address 0x\(String(address, radix: 16)), data 0x\(String(data, radix: 16))")
    }

    /// Replaces the whole GSI routing table with `entries`. Until the first
    /// call, a VM with an in-kernel irqchip has the kernel's default table;
    /// after it, GSIs not in `entries` go nowhere. The ioctl is KVM_SET_GSI_ROUTING.
    public func setGSIRouting(_ entries: [RoutingEntry]) throws(KVMError) {
        let buffer = FlexibleArrayBuffer<kvm_irq_routing, kvm_irq_routing_entry>(capacity: entries.count)
        buffer.header.pointee.nr = UInt32(entries.count)
        for (index, entry) in entries.enumerated() {
            buffer.entries[index] = entry.kernelEntry
        }
        try handle.call(.setGSIRouting, buffer.raw, context: "\(entries.count) entries")
    }

    // MARK: irqfd

    /// Makes a signal of `eventFD` raise GSI `gsi` (edge). With `resample`,
    /// the GSI is level-triggered: the kernel lowers it at the guest's EOI and
    /// signals `resample`, for the device to raise it again if still
    /// pending. The VM keeps the eventfds until `unregisterIRQFD`. The ioctl is
    /// KVM_IRQFD (with KVM_IRQFD_FLAG_RESAMPLE when `resample` is given).
    public func registerIRQFD(_ eventFD: EventFD, gsi: UInt32, resample: EventFD? = nil) throws(KVMError) {
        var irqfd = kvm_irqfd()
        irqfd.fd = UInt32(bitPattern: eventFD.rawValue)
        irqfd.gsi = gsi
        if let resample {
            irqfd.flags = UInt32(KVM_IRQFD_FLAG_RESAMPLE)
            irqfd.resamplefd = UInt32(bitPattern: resample.rawValue)
        }
        try handle.call(.irqfd, &irqfd, context: "eventfd \(eventFD.rawValue) on GSI \(gsi)")
        interrupts.withLock {
            $0.irqfds[.init(descriptor: eventFD.rawValue, gsi: gsi)] = (eventFD, resample)
        }
    }

    /// Stops `eventFD` from raising GSI `gsi`, and lets the VM's reference to
    /// it go. The ioctl is KVM_IRQFD with KVM_IRQFD_FLAG_DEASSIGN.
    public func unregisterIRQFD(_ eventFD: EventFD, gsi: UInt32) throws(KVMError) {
        var irqfd = kvm_irqfd()
        irqfd.fd = UInt32(bitPattern: eventFD.rawValue)
        irqfd.gsi = gsi
        irqfd.flags = UInt32(KVM_IRQFD_FLAG_DEASSIGN)
        try handle.call(.irqfd, &irqfd, context: "eventfd \(eventFD.rawValue) on GSI \(gsi)")
        _ = interrupts.withLock { $0.irqfds.removeValue(forKey: .init(descriptor: eventFD.rawValue, gsi: gsi)) }
    }

    // MARK: ioeventfd

    /// Makes guest writes of `length` bytes (1, 2, 4 or 8; 0 for any length
    /// where KVM_CAP_IOEVENTFD_ANY_LENGTH allows) to `address` in `space`
    /// signal `eventFD` in the kernel instead of exiting to user space. With
    /// `datamatch`, only writes of that value do. The VM keeps the eventfd
    /// until `unregisterIOEventFD`. The ioctl is KVM_IOEVENTFD.
    public func registerIOEventFD(
        _ eventFD: EventFD, address: UInt64, length: UInt32, space: IOSpace, datamatch: UInt64? = nil
    ) throws(KVMError) {
        var request = Self.ioeventfd(eventFD, address: address, length: length, space: space, datamatch: datamatch)
        try handle.call(.ioeventfd, &request, context: Self.describe(address: address, length: length, space: space, datamatch: datamatch))
        let key = InterruptState.IOEventFDKey(
            descriptor: eventFD.rawValue, address: address, length: length, space: space, datamatch: datamatch)
        interrupts.withLock { $0.ioeventfds[key] = eventFD }
    }

    /// Removes the registration `registerIOEventFD` made with the same
    /// arguments. The ioctl is KVM_IOEVENTFD with KVM_IOEVENTFD_FLAG_DEASSIGN.
    public func unregisterIOEventFD(
        _ eventFD: EventFD, address: UInt64, length: UInt32, space: IOSpace, datamatch: UInt64? = nil
    ) throws(KVMError) {
        var request = Self.ioeventfd(eventFD, address: address, length: length, space: space, datamatch: datamatch)
        request.flags |= IOEventFDFlag.deassign
        try handle.call(.ioeventfd, &request, context: Self.describe(address: address, length: length, space: space, datamatch: datamatch))
        let key = InterruptState.IOEventFDKey(
            descriptor: eventFD.rawValue, address: address, length: length, space: space, datamatch: datamatch)
        _ = interrupts.withLock { $0.ioeventfds.removeValue(forKey: key) }
    }

    private static func ioeventfd(
        _ eventFD: EventFD, address: UInt64, length: UInt32, space: IOSpace, datamatch: UInt64?
    ) -> kvm_ioeventfd {
        var request = kvm_ioeventfd()
        request.addr = address
        request.len = length
        request.fd = eventFD.rawValue
        if space == .pio { request.flags |= IOEventFDFlag.pio }
        if let datamatch {
            request.flags |= IOEventFDFlag.datamatch
            request.datamatch = datamatch
        }
        return request
    }

    private static func describe(address: UInt64, length: UInt32, space: IOSpace, datamatch: UInt64?) -> String {
        let match = datamatch.map { ", datamatch 0x\(String($0, radix: 16))" } ?? ""
        return "\(space == .pio ? "port" : "MMIO address") 0x\(String(address, radix: 16)), \(length) bytes\(match)"
    }

    // MARK: Coalesced MMIO

    /// Makes guest writes to `size` bytes at `address` in `space` go into the
    /// coalesced MMIO ring instead of exiting, until the ring is full; reads
    /// still exit. A PIO zone needs KVM_CAP_COALESCED_PIO. The ioctl is
    /// KVM_REGISTER_COALESCED_MMIO.
    public func registerCoalescedMMIO(address: UInt64, size: UInt32, space: IOSpace = .mmio) throws(KVMError) {
        var zone = Self.zone(address: address, size: size, space: space)
        try handle.call(.registerCoalescedMMIO, &zone, context: "\(size) bytes at 0x\(String(address, radix: 16))")
    }

    /// Removes the coalesced zones inside `size` bytes at `address`. The
    /// ioctl is KVM_UNREGISTER_COALESCED_MMIO.
    public func unregisterCoalescedMMIO(address: UInt64, size: UInt32, space: IOSpace = .mmio) throws(KVMError) {
        var zone = Self.zone(address: address, size: size, space: space)
        try handle.call(.unregisterCoalescedMMIO, &zone, context: "\(size) bytes at 0x\(String(address, radix: 16))")
    }

    private static func zone(address: UInt64, size: UInt32, space: IOSpace) -> kvm_coalesced_mmio_zone {
        var zone = kvm_coalesced_mmio_zone()
        zone.addr = address
        zone.size = size
        zone.pio = space == .pio ? 1 : 0
        return zone
    }

    /// The ring's capacity: `KVM_COALESCED_MMIO_MAX`.
    static var coalescedRingCapacity: Int {
        (GuestMemoryRegion.pageSize - MemoryLayout<kvm_coalesced_mmio_ring>.size) / MemoryLayout<kvm_coalesced_mmio>.stride
    }

    /// The page of a vCPU's mapping that holds the coalesced MMIO ring,
    /// asked of the kernel once (KVM_CHECK_EXTENSION of KVM_CAP_COALESCED_MMIO).
    private func coalescedRingPage() -> Int32? {
        if let known = interrupts.withLock({ $0.coalescedRingPage }) { return known }
        guard let page = try? checkExtension(.coalescedMMIO) else { return nil }
        interrupts.withLock { $0.coalescedRingPage = page }
        return page
    }

    /// Takes the writes queued in the VM's coalesced MMIO ring, oldest first,
    /// and frees their slots. The ring is one per VM, mapped into every vCPU
    /// at the page KVM_CHECK_EXTENSION(KVM_CAP_COALESCED_MMIO) names; it is
    /// read through `vcpu`'s mapping. Call from one thread at a time: the
    /// kernel is the only other writer. Empty when the VM has no ring.
    public func drainCoalescedMMIO(from vcpu: VCPU) -> [CoalescedWrite] {
        guard let pageOffset = coalescedRingPage(), pageOffset > 0 else { return [] }
        let pageSize = GuestMemoryRegion.pageSize
        let ringOffset = Int(pageOffset) * pageSize
        guard ringOffset + pageSize <= vcpu.page.size else { return [] }
        let ring = (vcpu.page.base + ringOffset).assumingMemoryBound(to: kvm_coalesced_mmio_ring.self)
        let entries = (vcpu.page.base + ringOffset + MemoryLayout<kvm_coalesced_mmio_ring>.size)
            .assumingMemoryBound(to: kvm_coalesced_mmio.self)
        let capacity = UInt32(Self.coalescedRingCapacity)

        var first = ring.pointee.first
        let last = ring.pointee.last
        // The kernel publishes `last` after writing the entry (smp_wmb); read
        // the entries only after reading `last`.
        atomicMemoryFence(ordering: .acquiring)
        guard first < capacity, last < capacity else { return [] }
        var writes: [CoalescedWrite] = []
        while first != last {
            let entry = entries[Int(first)]
            let length = min(entry.len, 8)
            let all = withUnsafeBytes(of: entry.data) { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
            let value = length >= 8 ? all : all & ((1 << (UInt64(length) * 8)) - 1)
            writes.append(CoalescedWrite(address: entry.phys_addr, length: entry.len, isPIO: entry.pio != 0, value: value))
            first = (first + 1) % capacity
        }
        // The slots are the kernel's again once `first` moves past them: the
        // reads above must be done before it does.
        atomicMemoryFence(ordering: .releasing)
        ring.pointee.first = first
        return writes
    }
}
