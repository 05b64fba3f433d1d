import CLinuxKVM
import Glibc
import KVM
import Synchronization
import SystemPackage

// GSI routing and the irqchip's requests, after the kernel's
// virt/kvm/irqchip.c, arch/x86/kvm/irq_comm.c and the irqchip cases of
// kvm_arch_vm_ioctl: KVM_CREATE_IRQCHIP, KVM_IRQ_LINE(_STATUS),
// KVM_GET/SET_IRQCHIP and KVM_SET_GSI_ROUTING.

/// KVM_MAX_IRQ_ROUTES: 4096 on every architecture in the kernels this
/// mirrors (older x86 kernels had 1024).
let KVM_MAX_IRQ_ROUTES: UInt32 = 4096
/// The irq source ids (`KVM_*_IRQ_SOURCE_ID`): each holds a line on its own.
let KVM_USERSPACE_IRQ_SOURCE_ID = 0
let KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID = 1

/// A routing entry as the kernel keeps it (`struct kvm_kernel_irq_routing_entry`).
struct KernelRoutingEntry: Equatable, Sendable {
    enum Route: Equatable, Sendable {
        /// A PIC pin 0-15: the slave's pins come after the master's.
        case pic(Int)
        case ioapic(Int)
        case msi(addressLow: UInt32, addressHigh: UInt32, data: UInt32)
    }

    let gsi: UInt32
    let route: Route

    /// The chip (KVM_IRQCHIP_*) and pin an irqchip route names, for ack notifiers.
    var chipPin: (UInt32, Int)? {
        switch route {
        case .pic(let pin): (pin < 8 ? UInt32(KVM_IRQCHIP_PIC_MASTER) : UInt32(KVM_IRQCHIP_PIC_SLAVE), pin & 7)
        case .ioapic(let pin): (UInt32(KVM_IRQCHIP_IOAPIC), pin)
        case .msi: nil
        }
    }
}

/// kvm_setup_default_irq_routing: GSIs 0-15 to the IOAPIC pin of the same
/// number and to the PIC pin, GSIs 16-23 to the IOAPIC only.
let defaultRouting: [KernelRoutingEntry] = (0..<UInt32(IOAPIC_NUM_PINS)).flatMap { gsi in
    gsi < 16 ? [KernelRoutingEntry(gsi: gsi, route: .ioapic(Int(gsi))), KernelRoutingEntry(gsi: gsi, route: .pic(Int(gsi)))]
        : [KernelRoutingEntry(gsi: gsi, route: .ioapic(Int(gsi)))]
}

/// The in-kernel irqchip's state behind one lock: the PICs, the IOAPIC, the
/// routing table and the irqfd resamplers' ack notifiers.
struct IrqchipCore: Sendable {
    var pic = PICPair()
    var ioapic = IOAPIC()
    var routes: [KernelRoutingEntry] = defaultRouting
    /// Resampler eventfds (descriptors SoftKVM owns) by GSI.
    var resamplers: [UInt32: [Int32]] = [:]
    /// `kvm->irq_ack_notifier_list` and `kvm->arch.mask_notifier_list` (the PIT's).
    var ackNotifiers: [IRQAckNotifier] = []
    var maskNotifiers: [IRQMaskNotifier] = []

    /// kvm_set_irq: the sum of what the GSI's routes accepted, or -1 when none did.
    mutating func setIRQ(source: Int, gsi: UInt32, level: Bool, lineStatus: Bool, bus: LocalAPICBus) -> Int32 {
        var ret: Int32 = -1
        var picTouched = false
        for entry in routes where entry.gsi == gsi {
            let r: Int32
            switch entry.route {
            case .pic(let pin):
                r = pic.setIRQ(pin, source: source, level: level)
                picTouched = true
            case .ioapic(let pin):
                r = ioapic.setIRQ(pin, source: source, level: level, lineStatus: lineStatus, bus: bus)
            case .msi(let low, let high, let data):
                r = level ? bus.deliver(msiMessage(addressLow: low, addressHigh: high, data: data)) : -1
            }
            if r < 0 { continue }
            ret = r + max(ret, 0)
        }
        if picTouched { bus.picOutputChanged(pic.output) }
        notifyAcked(bus: bus)
        return ret
    }

    /// kvm_notify_acked_irq for what the chips ended since last time: an
    /// irqfd resampler lowers its GSI and tells user space to check the device.
    mutating func notifyAcked(bus: LocalAPICBus) {
        fireMaskNotifiers()
        var acked: [(UInt32, Int)] = pic.acked.map { ($0 < 8 ? UInt32(KVM_IRQCHIP_PIC_MASTER) : UInt32(KVM_IRQCHIP_PIC_SLAVE), $0 & 7) }
        acked += ioapic.acked.map { (UInt32(KVM_IRQCHIP_IOAPIC), $0) }
        pic.acked = []
        ioapic.acked = []
        for (chip, pin) in acked { notifyAcked(chip: chip, pin: pin, bus: bus) }
    }

    /// kvm_notify_acked_irq for one pin: its GSI's ack notifiers hear of
    /// it, and its resamplers lower it and tell user space.
    mutating func notifyAcked(chip: UInt32, pin: Int, bus: LocalAPICBus) {
        guard let gsi = gsi(chip: chip, pin: pin) else { return }
        for notifier in ackNotifiers where notifier.gsi == gsi { notifier.acked() }
        guard let fds = resamplers[gsi], !fds.isEmpty else { return }
        _ = setIRQ(source: KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID, gsi: gsi, level: false, lineStatus: false, bus: bus)
        for fd in fds { signalEventFD(fd) }
    }

    /// kvm_ioapic_update_eoi: for each pin with `vector`, the ack notifiers
    /// first (a resampler lowers the line), then the pin's EOI, so that a
    /// line the device no longer drives is not delivered again.
    mutating func endOfInterrupt(vector: UInt8, levelTriggered: Bool, bus: LocalAPICBus) {
        for pin in ioapic.pins(vector: vector) {
            notifyAcked(chip: UInt32(KVM_IRQCHIP_IOAPIC), pin: pin, bus: bus)
            ioapic.endOfInterrupt(pin: pin, levelTriggered: levelTriggered, bus: bus)
        }
    }

    /// kvm_fire_mask_notifiers for the pins the chips masked or unmasked since last time.
    mutating func fireMaskNotifiers() {
        var changes = pic.maskChanges.map { ($0.pin < 8 ? UInt32(KVM_IRQCHIP_PIC_MASTER) : UInt32(KVM_IRQCHIP_PIC_SLAVE), $0.pin & 7, $0.masked) }
        changes += ioapic.maskChanges.map { (UInt32(KVM_IRQCHIP_IOAPIC), $0.pin, $0.masked) }
        pic.maskChanges = []
        ioapic.maskChanges = []
        for (chip, pin, masked) in changes {
            guard let gsi = gsi(chip: chip, pin: pin) else { continue }
            for notifier in maskNotifiers where notifier.gsi == gsi { notifier.changed(masked) }
        }
    }

    /// kvm_irq_map_chip_pin: the GSI routed to a chip's pin, the last one when several are.
    func gsi(chip: UInt32, pin: Int) -> UInt32? {
        routes.last(where: { $0.chipPin.map { $0 == (chip, pin) } ?? false })?.gsi
    }

    /// The IOAPIC pins whose GSI has an irqfd resampler.
    func resampledIOAPICPins() -> Set<Int> {
        Set((0..<IOAPIC_NUM_PINS).filter { pin in
            gsi(chip: UInt32(KVM_IRQCHIP_IOAPIC), pin: pin).map { !(resamplers[$0]?.isEmpty ?? true) } ?? false
        })
    }

    /// kvm_set_msi_irq: the message an MSI write of `data` to `address` is.
    func msiMessage(addressLow: UInt32, addressHigh: UInt32, data: UInt32) -> APICMessage {
        APICMessage(vector: UInt8(truncatingIfNeeded: data), deliveryMode: UInt8((data >> 8) & 7),
                    logicalDestination: addressLow & (1 << 2) != 0, levelTriggered: data & (1 << 15) != 0,
                    destination: (addressLow >> 12) & 0xFF)
    }
}

/// Adds 1 to an eventfd's counter, as the kernel's eventfd_signal.
func signalEventFD(_ descriptor: Int32) {
    var one: UInt64 = 1
    _ = withUnsafeBytes(of: &one) { Glibc.write(descriptor, $0.baseAddress, 8) }
}

/// The in-kernel irqchip of a VM: what the CPU calls on guest accesses to
/// the PIC's ports and the IOAPIC's page, and on interrupt acknowledge and EOI.
public final class SoftIrqchip: Sendable {
    let core = Mutex(IrqchipCore())
    public let bus: LocalAPICBus

    init(bus: LocalAPICBus) { self.bus = bus }

    /// Raises or lowers `gsi` through the routing table (kvm_set_irq).
    func setIRQ(source: Int, gsi: UInt32, level: Bool, lineStatus: Bool = false) -> Int32 {
        core.withLock { $0.setIRQ(source: source, gsi: gsi, level: level, lineStatus: lineStatus, bus: bus) }
    }

    /// Whether the PIC answers `port` (0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1).
    public func handlesPort(_ port: UInt16) -> Bool { PICPair.handles(port: port) }

    /// A guest `out` to a PIC port.
    public func portWrite(_ port: UInt16, value: UInt8, length: Int = 1) {
        let anyAccepts = bus.acceptsPICInterrupts
        core.withLock { core in
            core.pic.write(port: port, value: value, length: length, anyVCPUAcceptsPIC: anyAccepts)
            bus.picOutputChanged(core.pic.output)
            core.notifyAcked(bus: bus)
        }
    }

    /// A guest `in` from a PIC port.
    public func portRead(_ port: UInt16, length: Int = 1) -> UInt8 {
        core.withLock { core in
            let value = core.pic.read(port: port, length: length)
            bus.picOutputChanged(core.pic.output)
            core.notifyAcked(bus: bus)
            return value
        }
    }

    /// The PIC's INTR output.
    public var picOutput: Bool { core.withLock { $0.pic.output } }

    /// The interrupt acknowledge cycle: the vector the PIC gives the CPU (kvm_pic_read_irq).
    public func picAcknowledge() -> UInt8 {
        core.withLock { core in
            let vector = core.pic.readIRQ()
            bus.picOutputChanged(core.pic.output)
            core.notifyAcked(bus: bus)
            return vector
        }
    }

    /// Whether `address` is in the IOAPIC's registers.
    public func handlesMMIO(_ address: UInt64) -> Bool { core.withLock { $0.ioapic.handles(address: address) } }

    public func mmioRead(_ address: UInt64, length: Int) -> UInt64 {
        core.withLock { $0.ioapic.read(address: address, length: length) }
    }

    public func mmioWrite(_ address: UInt64, length: Int, value: UInt64) {
        core.withLock { core in
            let resampled = core.resampledIOAPICPins()
            core.ioapic.write(address: address, length: length, value: value, bus: bus, hasResampler: resampled.contains)
            for pin in core.ioapic.resampleNotified {
                if let gsi = core.gsi(chip: UInt32(KVM_IRQCHIP_IOAPIC), pin: pin) {
                    core.resamplers[gsi]?.forEach(signalEventFD)
                }
            }
            core.ioapic.resampleNotified = []
            core.notifyAcked(bus: bus)
        }
    }

    /// A local APIC's EOI of `vector`, level-triggered in its TMR or not (kvm_ioapic_update_eoi).
    public func endOfInterrupt(vector: UInt8, levelTriggered: Bool = true) {
        core.withLock { core in
            core.endOfInterrupt(vector: vector, levelTriggered: levelTriggered, bus: bus)
            core.notifyAcked(bus: bus)
        }
    }
}

extension SoftBackend {
    /// KVM_CREATE_IRQCHIP: once, and before any vCPU.
    func kvm_vm_ioctl_create_irqchip(_ vm: SoftVM) -> Int32 {
        vm.vcpus.withLock { vcpus in
            vm.irqchipSlot.withLock { slot in
                if slot != nil { return fail(.fileExists) }
                if vcpus.created > 0 { return fail(.invalidArgument) }
                slot = SoftIrqchip(bus: SoftAPICBus())
                return 0
            }
        }
    }

    /// KVM_IRQ_LINE and KVM_IRQ_LINE_STATUS (kvm_vm_ioctl_irq_line); only
    /// the second writes the status back.
    func kvm_vm_ioctl_irq_line(_ vm: SoftVM, _ arg: UInt, withStatus: Bool) -> Int32 {
        guard var event = UserMemory.read(kvm_irq_level.self, from: arg) else { return fail(.badAddress) }
        guard let irqchip = vm.irqchip else { return fail(.noSuchAddressOrDevice) }
        let status = irqchip.setIRQ(source: KVM_USERSPACE_IRQ_SOURCE_ID, gsi: event.irq, level: event.level != 0,
                                    lineStatus: withStatus)
        if withStatus {
            event.status = status
            guard UserMemory.write(event, to: arg) else { return fail(.badAddress) }
        }
        return 0
    }

    /// KVM_GET_IRQCHIP and KVM_SET_IRQCHIP: only the chip's own struct is
    /// copied; the rest of the 512 bytes is left as the caller gave it.
    func kvm_vm_ioctl_irqchip(_ vm: SoftVM, _ arg: UInt, set: Bool) -> Int32 {
        guard var chip = UserMemory.read(kvm_irqchip.self, from: arg) else { return fail(.badAddress) }
        guard let irqchip = vm.irqchip else { return fail(.noSuchAddressOrDevice) }
        let r: Int32 = irqchip.core.withLock { core in
            switch chip.chip_id {
            case UInt32(KVM_IRQCHIP_PIC_MASTER), UInt32(KVM_IRQCHIP_PIC_SLAVE):
                let index = Int(chip.chip_id)
                if set {
                    core.pic.pics[index] = KPICState(chip.chip.pic)
                } else {
                    chip.chip.pic = core.pic.pics[index].kernelState
                }
            case UInt32(KVM_IRQCHIP_IOAPIC):
                if set {
                    let bytes = withUnsafeBytes(of: chip.chip) { Array($0.prefix(IOAPIC.stateSize)) }
                    core.ioapic.load(bytes, bus: irqchip.bus)
                } else {
                    let bytes = core.ioapic.stateBytes()
                    withUnsafeMutableBytes(of: &chip.chip) { $0.copyBytes(from: bytes) }
                }
            default:
                return fail(.invalidArgument)
            }
            if set {
                core.pic.update()
                irqchip.bus.picOutputChanged(core.pic.output)
            }
            return 0
        }
        if r != 0 || set { return r }
        return UserMemory.write(chip, to: arg) ? 0 : fail(.badAddress)
    }

    /// KVM_SET_GSI_ROUTING: validates every entry, then replaces the table.
    func kvm_vm_ioctl_set_gsi_routing(_ vm: SoftVM, _ arg: UInt) -> Int32 {
        guard let routing = UserMemory.read(kvm_irq_routing.self, from: arg) else { return fail(.badAddress) }
        // kvm_arch_can_set_irq_routing: x86 needs the in-kernel irqchip.
        guard let irqchip = vm.irqchip else { return fail(.invalidArgument) }
        if routing.nr > KVM_MAX_IRQ_ROUTES || routing.flags != 0 { return fail(.invalidArgument) }
        let base = arg + UInt(MemoryLayout<kvm_irq_routing>.size)
        var user: [kvm_irq_routing_entry] = []
        for i in 0..<Int(routing.nr) {
            guard let entry = UserMemory.read(kvm_irq_routing_entry.self, from: base + UInt(i * MemoryLayout<kvm_irq_routing_entry>.stride)) else {
                return fail(.badAddress)
            }
            user.append(entry)
        }
        if user.contains(where: { $0.gsi >= KVM_MAX_IRQ_ROUTES }) { return fail(.invalidArgument) }
        var table: [KernelRoutingEntry] = []
        for ue in user {
            let flagsValid = ue.type == UInt32(KVM_IRQ_ROUTING_MSI) ? ue.flags & ~KVM_MSI_VALID_DEVID == 0 : ue.flags == 0
            if !flagsValid { return fail(.invalidArgument) }
            guard let entry = kvm_set_routing_entry(ue) else { return fail(.invalidArgument) }
            // setup_routing_entry: one route per chip per GSI, and a
            // non-irqchip route alone on its GSI.
            for other in table where other.gsi == ue.gsi {
                guard let a = other.chipPin, let b = entry.chipPin, a.0 != b.0 else { return fail(.invalidArgument) }
            }
            table.append(entry)
        }
        irqchip.core.withLock { $0.routes = table }
        return 0
    }

    /// kvm_set_routing_entry (x86): irqchip pins in range, and MSIs. Hyper-V
    /// SINT and Xen event channel routes need what SoftKVM does not have.
    func kvm_set_routing_entry(_ ue: kvm_irq_routing_entry) -> KernelRoutingEntry? {
        switch ue.type {
        case UInt32(KVM_IRQ_ROUTING_IRQCHIP):
            let pin = ue.u.irqchip.pin
            switch ue.u.irqchip.irqchip {
            case UInt32(KVM_IRQCHIP_PIC_MASTER), UInt32(KVM_IRQCHIP_PIC_SLAVE):
                if pin >= UInt32(PIC_NUM_PINS / 2) { return nil }
                let offset = ue.u.irqchip.irqchip == UInt32(KVM_IRQCHIP_PIC_SLAVE) ? 8 : 0
                return KernelRoutingEntry(gsi: ue.gsi, route: .pic(Int(pin) + offset))
            case UInt32(KVM_IRQCHIP_IOAPIC):
                if pin >= UInt32(IOAPIC_NUM_PINS) { return nil }
                return KernelRoutingEntry(gsi: ue.gsi, route: .ioapic(Int(pin)))
            default:
                return nil
            }
        case UInt32(KVM_IRQ_ROUTING_MSI):
            return KernelRoutingEntry(gsi: ue.gsi, route: .msi(addressLow: ue.u.msi.address_lo,
                                                                addressHigh: ue.u.msi.address_hi, data: ue.u.msi.data))
        default:
            return nil
        }
    }
}

extension SoftBackend {
    /// KVM_SIGNAL_MSI (kvm_send_userspace_msi): the delivery's result is
    /// the request's, so an MSI no LAPIC was addressed by fails with -1 (EPERM).
    func kvm_send_userspace_msi(_ vm: SoftVM, _ arg: UInt) -> Int32 {
        guard let msi = UserMemory.read(kvm_msi.self, from: arg) else { return fail(.badAddress) }
        guard let irqchip = vm.irqchip, msi.flags & ~KVM_MSI_VALID_DEVID == 0 else { return fail(.invalidArgument) }
        return irqchip.core.withLock { core in
            irqchip.bus.deliver(core.msiMessage(addressLow: msi.address_lo, addressHigh: msi.address_hi, data: msi.data))
        }
    }
}
