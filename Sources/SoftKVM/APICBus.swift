import Synchronization

// Delivery to the local APICs, after the kernel's kvm_irq_delivery_to_apic
// and the APIC map of arch/x86/kvm/lapic.c: the IOAPIC's pins, MSIs and
// the APICs' own IPIs reach their destinations through the map (the fast
// path) or by matching every vCPU's APIC (the slow path).
//
// The map is rebuilt where the kernel rebuilds it: when a register that
// addresses an APIC changes, and when a vCPU's APIC is reset at creation,
// which happens before that vCPU is online. So until something else
// changes, the newest vCPU is missing from the map, and a physical
// message to it reaches nobody, exactly as on the host.
//
// Locks: the map's lock is taken before an APIC's, never after; an APIC's
// lock is taken last, and nothing is called while holding it.

/// The APIC map (`struct kvm_apic_map`): physical IDs and logical
/// destinations to APICs, for single-destination delivery.
struct APICMap {
    enum LogicalMode {
        /// Every APIC software-disabled: logical messages reach nobody.
        case softwareDisabled
        case flat
        case cluster
        /// APICs disagree on the model or share a logical ID: slow path.
        case disabled
    }

    /// Enough for any xAPIC ID (no x2APIC).
    let maxAPICID: UInt32 = 255
    var physical = [LocalAPIC?](repeating: nil, count: 256)
    var logicalMode = LogicalMode.softwareDisabled
    var flat = [LocalAPIC?](repeating: nil, count: 8)
    var cluster = [[LocalAPIC?]](repeating: [LocalAPIC?](repeating: nil, count: 4), count: 16)

    /// kvm_apic_map_get_logical_dest: the cluster's slots and the mask of those addressed.
    func logicalDestination(_ destination: UInt32) -> (slots: [LocalAPIC?], mask: UInt32)? {
        switch logicalMode {
        case .softwareDisabled: return (flat, 0)
        case .flat: return (flat, destination & 0xFF)
        case .cluster: return (cluster[Int((destination >> 4) & 0xF)], destination & 0xF)
        case .disabled: return nil
        }
    }

    mutating func setLogical(_ destination: UInt32, bit: Int, _ apic: LocalAPIC) {
        if logicalMode == .flat { flat[bit] = apic } else { cluster[Int((destination >> 4) & 0xF)][bit] = apic }
    }

    func logicalSlot(_ destination: UInt32, bit: Int) -> LocalAPIC? {
        logicalMode == .flat ? flat[bit] : cluster[Int((destination >> 4) & 0xF)][bit]
    }
}

/// The local APICs of a VM as its irqchip sees them: where the IOAPIC's
/// and MSIs' messages go, and where the PIC's INTR reaches a vCPU.
final class SoftAPICBus: LocalAPICBus, Sendable {
    /// The online vCPUs' APICs in creation order (`kvm->vcpu_array`).
    private let online = Mutex<[LocalAPIC]>([])
    /// The map; nil when APIC IDs alias (the kernel then disables it).
    private let map = Mutex<APICMap?>(nil)
    /// The PIC's INTR output, as last reported.
    private let picLevel = Atomic<Bool>(false)

    var apics: [LocalAPIC] { online.withLock { $0 } }

    // MARK: vCPUs

    /// A vCPU's APIC after its reset, before the vCPU is online: the map is
    /// rebuilt without it (kvm_lapic_reset's kvm_recalculate_apic_map).
    func vcpuCreating(_ apic: LocalAPIC) {
        recalculateMap()
    }

    /// The vCPU is online (kvm_vm_ioctl_create_vcpu's online_vcpus).
    func vcpuOnline(_ apic: LocalAPIC) {
        online.withLock { $0.append(apic) }
    }

    /// kvm_recalculate_apic_map over the online vCPUs.
    func recalculateMap() {
        let apics = online.withLock { $0 }
        map.withLock { map in
            var new = APICMap()
            for apic in apics {
                let snapshot = apic.withState { ($0.hwEnabled, $0.xapicID, $0.swEnabled, $0.reg(APIC_LDR), $0.reg(APIC_DFR)) }
                let (present, xapicID, swEnabled, ldr, dfr) = snapshot
                guard present else { continue }
                // kvm_recalculate_phys_map: aliased physical IDs disable the map.
                if new.physical[Int(xapicID)] != nil {
                    map = nil
                    return
                }
                new.physical[Int(xapicID)] = apic
                // kvm_recalculate_logical_map.
                guard new.logicalMode != .disabled, swEnabled, ldr != 0 else { continue }
                let logicalID = ldr >> 24
                let mode: APICMap.LogicalMode = dfr == APIC_DFR_FLAT ? .flat : .cluster
                if new.logicalMode == .softwareDisabled {
                    new.logicalMode = mode
                } else if new.logicalMode != mode {
                    new.logicalMode = .disabled
                    continue
                }
                guard let (_, mask) = new.logicalDestination(logicalID), mask != 0 else { continue }
                let bit = mask.trailingZeroBitCount
                if mask & (mask - 1) != 0 || new.logicalSlot(logicalID, bit: bit) != nil {
                    new.logicalMode = .disabled
                } else {
                    new.setLogical(logicalID, bit: bit, apic)
                }
            }
            map = new
        }
    }

    // MARK: Delivery

    /// kvm_apic_match_dest.
    private func matches(_ target: LocalAPIC, source: LocalAPIC?, _ irq: LAPICIRQ) -> Bool {
        switch irq.shorthand {
        case APIC_DEST_NOSHORT:
            return target.withState { irq.logicalDestination ? $0.matchLogical(irq.destination) : $0.matchPhysical(irq.destination) }
        case APIC_DEST_SELF: return target === source
        case APIC_DEST_ALLINC: return true
        case APIC_DEST_ALLBUT: return target !== source
        default: return false
        }
    }

    /// __kvm_irq_delivery_to_apic_fast: nil when the map cannot decide
    /// (a shorthand, a broadcast, no map, a disabled logical map).
    private func deliverFast(source: LocalAPIC?, _ irq: LAPICIRQ) -> Int32? {
        if irq.shorthand == APIC_DEST_SELF {
            return source?.setIRQ(irq) ?? 0
        }
        if irq.shorthand != 0 || irq.destination == APIC_BROADCAST { return nil }
        let targets: [LocalAPIC]? = map.withLock { map in
            guard let map else { return nil }
            if !irq.logicalDestination {
                guard irq.destination <= map.maxAPICID else { return [] }
                return map.physical[Int(irq.destination)].map { [$0] } ?? []
            }
            guard let (slots, mask) = map.logicalDestination(irq.destination) else { return nil }
            if !irq.isLowestPriority {
                return (0..<slots.count).compactMap { mask & (1 << UInt32($0)) != 0 ? slots[$0] : nil }
            }
            guard mask != 0 else { return [] }
            // Vector hashing: the (vector mod n)th of the n addressed slots.
            let bits = (0..<16).filter { mask & (1 << UInt32($0)) != 0 }
            let slot = bits[Int(irq.vector) % bits.count]
            return slot < slots.count ? (slots[slot].map { [$0] } ?? []) : []
        }
        guard let targets else { return nil }
        return targets.reduce(0) { $0 + $1.setIRQ(irq) }
    }

    /// kvm_irq_delivery_to_apic: how many APICs took the message, or -1
    /// when none was addressed.
    func deliver(_ irq: LAPICIRQ, source: LocalAPIC?) -> Int32 {
        if let r = deliverFast(source: source, irq) { return r }
        var irq = irq
        if !irq.logicalDestination && irq.destination == APIC_BROADCAST && irq.isLowestPriority {
            irq.deliveryMode = APIC_DM_FIXED
        }
        var r: Int32 = -1
        var candidates: [LocalAPIC] = []
        for apic in apics {
            let (present, swEnabled) = apic.withState { ($0.hwEnabled, $0.swEnabled) }
            guard present, matches(apic, source: source, irq) else { continue }
            if !irq.isLowestPriority {
                r = max(r, 0) + apic.setIRQ(irq)
            } else if swEnabled {
                candidates.append(apic)
            }
        }
        if !candidates.isEmpty {
            r = candidates[Int(irq.vector) % candidates.count].setIRQ(irq)
        }
        return r
    }

    // MARK: LocalAPICBus

    func deliver(_ message: APICMessage) -> Int32 {
        deliver(LAPICIRQ(message), source: nil)
    }

    /// pic_irq_request and the kick in pic_unlock: the first vCPU whose
    /// LINT0 takes the PIC is woken.
    func picOutputChanged(_ level: Bool) {
        let old = picLevel.exchange(level, ordering: .acquiringAndReleasing)
        guard level, !old else { return }
        for apic in apics where apic.withState({ $0.acceptsPICInterrupt }) {
            apic.kick()
            return
        }
    }

    /// The PIC's INTR output, without the irqchip's lock.
    var picOutput: Bool { picLevel.load(ordering: .acquiring) }

    var acceptsPICInterrupts: Bool {
        apics.contains { $0.withState { $0.acceptsPICInterrupt } }
    }
}
