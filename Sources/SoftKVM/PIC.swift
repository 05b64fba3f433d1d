import CLinuxKVM

// The in-kernel 8259 pair, after the kernel's arch/x86/kvm/i8259.c: two
// chips cascaded on the master's IRQ2, their port interface (0x20/0x21,
// 0xa0/0xa1, ELCR at 0x4d0/0x4d1) and KVM_GET/SET_IRQCHIP's kvm_pic_state.

/// PIC_NUM_PINS: both chips' pins, as routing and ack notifiers number them.
let PIC_NUM_PINS = 16

/// One 8259 (`struct kvm_kpic_state`), field for field the uapi `struct
/// kvm_pic_state` that KVM_GET_IRQCHIP copies out.
struct KPICState: Equatable, Sendable {
    var lastIRR: UInt8 = 0  // edge detection
    var irr: UInt8 = 0
    var imr: UInt8 = 0
    var isr: UInt8 = 0
    var priorityAdd: UInt8 = 0  // the pin of highest priority
    var irqBase: UInt8 = 0
    var readRegisterSelect: UInt8 = 0
    var poll: UInt8 = 0
    var specialMask: UInt8 = 0
    var initState: UInt8 = 0
    var autoEOI: UInt8 = 0
    var rotateOnAutoEOI: UInt8 = 0
    var specialFullyNestedMode: UInt8 = 0
    var init4: UInt8 = 0
    var elcr: UInt8 = 0  // PIIX edge/level selection
    var elcrMask: UInt8 = 0

    init(elcrMask: UInt8) { self.elcrMask = elcrMask }

    init(_ s: kvm_pic_state) {
        lastIRR = s.last_irr; irr = s.irr; imr = s.imr; isr = s.isr
        priorityAdd = s.priority_add; irqBase = s.irq_base; readRegisterSelect = s.read_reg_select
        poll = s.poll; specialMask = s.special_mask; initState = s.init_state; autoEOI = s.auto_eoi
        rotateOnAutoEOI = s.rotate_on_auto_eoi; specialFullyNestedMode = s.special_fully_nested_mode
        init4 = s.init4; elcr = s.elcr; elcrMask = s.elcr_mask
    }

    var kernelState: kvm_pic_state {
        kvm_pic_state(
            last_irr: lastIRR, irr: irr, imr: imr, isr: isr, priority_add: priorityAdd, irq_base: irqBase,
            read_reg_select: readRegisterSelect, poll: poll, special_mask: specialMask, init_state: initState,
            auto_eoi: autoEOI, rotate_on_auto_eoi: rotateOnAutoEOI,
            special_fully_nested_mode: specialFullyNestedMode, init4: init4, elcr: elcr, elcr_mask: elcrMask)
    }

    /// The priority (0 highest, 8 none) of the best pin in `mask`, counted from `priorityAdd`.
    func priority(_ mask: UInt8) -> Int {
        if mask == 0 { return 8 }
        var priority = 0
        while mask & (1 << ((priority + Int(priorityAdd)) & 7)) == 0 { priority += 1 }
        return priority
    }

    /// pic_set_irq1: 1 when the request is new, 0 when it merged with a
    /// pending one, -1 when the pin is masked.
    mutating func setIRQ1(_ pin: Int, _ level: Bool) -> Int32 {
        let mask = UInt8(1) << pin
        var ret: Int32 = 1
        if elcr & mask != 0 {
            if level {
                ret = irr & mask == 0 ? 1 : 0
                irr |= mask
                lastIRR |= mask
            } else {
                irr &= ~mask
                lastIRR &= ~mask
            }
        } else if level {
            // Edge: only a rising edge requests.
            if lastIRR & mask == 0 {
                ret = irr & mask == 0 ? 1 : 0
                irr |= mask
            }
            lastIRR |= mask
        } else {
            lastIRR &= ~mask
        }
        return imr & mask != 0 ? -1 : ret
    }
}

/// The two 8259s (`struct kvm_pic`): pins 0-7 on the master, 8-15 on the
/// slave, which requests through the master's pin 2.
///
/// Operations that end an interrupt's service (EOI, auto-EOI, poll) add the
/// pin to `acked`, the kernel's kvm_notify_acked_irq, for the caller to
/// notify after it lets go of the chip (irqfd resamplers do).
struct PICPair: Sendable {
    var pics = [KPICState(elcrMask: 0xF8), KPICState(elcrMask: 0xDE)]
    /// Each pin's sources that hold it high (`irq_states`): the line is their OR.
    var irqStates = [UInt64](repeating: 0, count: PIC_NUM_PINS)
    /// The master's INTR output to the bootstrap processor.
    private(set) var output = false
    /// Pins (0-15) whose service ended since the caller last emptied this.
    var acked: [Int] = []
    /// Pins (0-15) whose IMR bit changed, and to what, since the caller
    /// last emptied this (the kernel's kvm_fire_mask_notifiers).
    var maskChanges: [(pin: Int, masked: Bool)] = []

    /// kvm_pic_set_irq: `pin` 0-15 raised or lowered by `source`.
    mutating func setIRQ(_ pin: Int, source: Int, level: Bool) -> Int32 {
        let line = lineState(&irqStates[pin], source: source, level: level)
        let ret = pics[pin >> 3].setIRQ1(pin & 7, line)
        update()
        return ret
    }

    /// pic_get_irq: the pin (0-7) the chip would raise now, or nil.
    func pendingPin(_ chip: Int) -> Int? {
        let s = pics[chip]
        let priority = s.priority(s.irr & ~s.imr)
        if priority == 8 { return nil }
        // In special fully nested mode the master does not count the
        // slave's pin in service, so the slave's higher requests get through.
        var inService = s.isr
        if s.specialFullyNestedMode != 0 && chip == 0 { inService &= ~(1 << 2) }
        return priority < s.priority(inService) ? (priority + Int(s.priorityAdd)) & 7 : nil
    }

    /// pic_update_irq: cascades the slave into the master and sets INTR.
    mutating func update() {
        if pendingPin(1) != nil {
            _ = pics[0].setIRQ1(2, true)
            _ = pics[0].setIRQ1(2, false)
        }
        output = pendingPin(0) != nil
    }

    mutating func clearISR(_ chip: Int, _ pin: Int) {
        pics[chip].isr &= ~(1 << pin)
        acked.append(pin + 8 * chip)
    }

    mutating func intack(_ chip: Int, _ pin: Int) {
        pics[chip].isr |= 1 << pin
        // A level-triggered request stays until the device lowers its line.
        if pics[chip].elcr & (1 << pin) == 0 { pics[chip].irr &= ~(1 << pin) }
        if pics[chip].autoEOI != 0 {
            if pics[chip].rotateOnAutoEOI != 0 { pics[chip].priorityAdd = UInt8((pin + 1) & 7) }
            clearISR(chip, pin)
        }
    }

    /// kvm_pic_read_irq: the CPU's interrupt acknowledge cycle; the vector.
    mutating func readIRQ() -> UInt8 {
        output = false
        let vector: UInt8
        if let pin = pendingPin(0) {
            intack(0, pin)
            if pin == 2 {
                var slavePin = 7  // A spurious IRQ on the slave.
                if let pending = pendingPin(1) {
                    intack(1, pending)
                    slavePin = pending
                }
                vector = pics[1].irqBase &+ UInt8(slavePin)
            } else {
                vector = pics[0].irqBase &+ UInt8(pin)
            }
        } else {
            vector = pics[0].irqBase &+ 7  // A spurious IRQ on the master.
        }
        update()
        return vector
    }

    /// kvm_pic_reset, on ICW1.
    mutating func reset(_ chip: Int, anyVCPUAcceptsPIC: Bool) {
        var s = pics[chip]
        let edgeIRR = s.irr & ~s.elcr
        s.lastIRR = 0
        s.irr &= s.elcr
        s.imr = 0
        s.priorityAdd = 0
        s.specialMask = 0
        s.readRegisterSelect = 0
        if s.init4 == 0 {
            s.specialFullyNestedMode = 0
            s.autoEOI = 0
        }
        s.initState = 1
        pics[chip] = s
        guard anyVCPUAcceptsPIC else { return }
        for pin in 0..<8 where edgeIRR & (1 << pin) != 0 { clearISR(chip, pin) }
    }

    // MARK: Ports

    /// Whether SoftKVM's PIC answers `port` (picdev_in_range).
    static func handles(port: UInt16) -> Bool {
        [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1].contains(port)
    }

    /// A guest `out` (picdev_write). Only byte writes do anything, as in the kernel.
    mutating func write(port: UInt16, value: UInt8, length: Int = 1, anyVCPUAcceptsPIC: Bool = false) {
        guard length == 1 else { return }
        switch port {
        case 0x20, 0x21, 0xA0, 0xA1: ioportWrite(Int(port >> 7), address: port, value: value, anyVCPUAcceptsPIC)
        case 0x4D0, 0x4D1: pics[Int(port & 1)].elcr = value & pics[Int(port & 1)].elcrMask
        default: break
        }
    }

    /// A guest `in` (picdev_read); reads that are not one byte give 0.
    mutating func read(port: UInt16, length: Int = 1) -> UInt8 {
        guard length == 1 else { return 0 }
        switch port {
        case 0x20, 0x21, 0xA0, 0xA1: return ioportRead(Int(port >> 7), address: port)
        case 0x4D0, 0x4D1: return pics[Int(port & 1)].elcr
        default: return 0
        }
    }

    /// pic_ioport_write: ICW1 and OCW2/OCW3 on the even port; IMR (OCW1) or
    /// ICW2-4 on the odd one, as the init sequence stands.
    private mutating func ioportWrite(_ chip: Int, address: UInt16, value: UInt8, _ anyVCPUAcceptsPIC: Bool) {
        if address & 1 == 0 {
            if value & 0x10 != 0 {  // ICW1
                pics[chip].init4 = value & 1
                reset(chip, anyVCPUAcceptsPIC: anyVCPUAcceptsPIC)
            } else if value & 0x08 != 0 {  // OCW3
                if value & 0x04 != 0 { pics[chip].poll = 1 }
                if value & 0x02 != 0 { pics[chip].readRegisterSelect = value & 1 }
                if value & 0x40 != 0 { pics[chip].specialMask = (value >> 5) & 1 }
            } else {  // OCW2
                let command = value >> 5
                switch command {
                case 0, 4:
                    pics[chip].rotateOnAutoEOI = command >> 2
                case 1, 5:  // Non-specific EOI, with rotation for 5.
                    let priority = pics[chip].priority(pics[chip].isr)
                    if priority != 8 {
                        let pin = (priority + Int(pics[chip].priorityAdd)) & 7
                        if command == 5 { pics[chip].priorityAdd = UInt8((pin + 1) & 7) }
                        clearISR(chip, pin)
                        update()
                    }
                case 3:  // Specific EOI.
                    clearISR(chip, Int(value & 7))
                    update()
                case 6:  // Set priority.
                    pics[chip].priorityAdd = (value &+ 1) & 7
                    update()
                case 7:  // Specific EOI with rotation.
                    let pin = Int(value & 7)
                    pics[chip].priorityAdd = UInt8((pin + 1) & 7)
                    clearISR(chip, pin)
                    update()
                default:
                    break
                }
            }
            return
        }
        switch pics[chip].initState {
        case 0:
            let changed = pics[chip].imr ^ value
            pics[chip].imr = value
            for pin in 0..<8 where changed & (1 << pin) != 0 { maskChanges.append((pin + 8 * chip, value & (1 << pin) != 0)) }
            update()
        case 1:
            pics[chip].irqBase = value & 0xF8
            pics[chip].initState = 2
        case 2:  // ICW3: the cascade wiring is fixed.
            pics[chip].initState = pics[chip].init4 != 0 ? 3 : 0
        case 3:
            pics[chip].specialFullyNestedMode = (value >> 4) & 1
            pics[chip].autoEOI = (value >> 1) & 1
            pics[chip].initState = 0
        default:
            break
        }
    }

    private mutating func ioportRead(_ chip: Int, address: UInt16) -> UInt8 {
        if pics[chip].poll != 0 {
            let value = pollRead(chip, address: address)
            pics[chip].poll = 0
            return value
        }
        if address & 1 == 0 { return pics[chip].readRegisterSelect != 0 ? pics[chip].isr : pics[chip].irr }
        return pics[chip].imr
    }

    /// pic_poll_read: a poll command's read acknowledges the best request
    /// and gives its pin (7 when there is none), as the kernel does.
    private mutating func pollRead(_ chip: Int, address: UInt16) -> UInt8 {
        guard let pin = pendingPin(chip) else {
            update()
            return 7
        }
        let isSlave = address >> 7 != 0
        if isSlave {
            pics[0].isr &= ~(1 << 2)
            pics[0].irr &= ~(1 << 2)
        }
        pics[chip].irr &= ~(1 << pin)
        clearISR(chip, pin)
        if isSlave || pin != 2 { update() }
        return UInt8(pin)
    }
}

/// __kvm_irq_line_state: a line is high while any source holds it.
func lineState(_ state: inout UInt64, source: Int, level: Bool) -> Bool {
    if level { state |= 1 << UInt64(source) } else { state &= ~(1 << UInt64(source)) }
    return state != 0
}
