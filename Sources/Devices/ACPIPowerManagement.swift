/// The ACPI fixed-hardware registers the FADT points at, laid out as on
/// QEMU's ICH9 (from the PM base, 0x600 by default): PM1a status (offset 0)
/// and enable (2), PM1a control (4), and the PM timer (8). A write of
/// SLP_EN with the \_S5 sleep type powers off through `powerOff`.
///
/// The SCI (`interrupt`, a level) is high while a status bit is set whose
/// enable bit is: PWRBTN_STS from a power button press of the host, and
/// TMR_STS, which the 32-bit PM timer (TMR_VAL_EXT) sets each time its
/// bit 31 changes. The status is brought up to the clock at every access
/// and at `update()`, which the machine calls at `nextEventTime`.
///
/// Registers are 16 or 32 bits wide and the PM timer must be read in one
/// access (byte reads of a running counter would tear), so accesses carry
/// their size.
public final class ACPIPowerManagement {
    public static let statusOffset = 0
    public static let enableOffset = 2
    public static let controlOffset = 4
    public static let timerOffset = 8
    /// Bytes of port space from the PM base.
    public static let size = 12

    public static let timerStatus: UInt16 = 1 << 0
    public static let powerButtonStatus: UInt16 = 1 << 8
    public static let wakeStatus: UInt16 = 1 << 15
    public static let sciEnable: UInt16 = 1 << 0
    public static let sleepEnable: UInt16 = 1 << 13
    /// The ACPI PM timer's frequency: 3.579545 MHz.
    public static let timerFrequency: UInt64 = 3_579_545

    private let sleepTypeS5: UInt16
    private let interrupt: (Bool) -> Void
    private let powerOff: () -> Void
    private let clock: () -> UInt64
    private var status: UInt16 = 0
    private var enable: UInt16 = 0
    /// SCI_EN set: with no SMI command port the machine is always in ACPI mode.
    private var control: UInt16 = ACPIPowerManagement.sciEnable
    private var level = false
    /// The clock time (ns) TMR_STS has been brought up to.
    private var evaluated: UInt64
    /// PM timer ticks between changes of its bit 31.
    static let timerStatusTicks: UInt64 = 1 << 31

    /// `clock` gives monotonic nanoseconds for the PM timer; `sleepTypeS5`
    /// is the SLP_TYP the DSDT's \_S5 gives.
    public init(sleepTypeS5: UInt8, clock: @escaping () -> UInt64, interrupt: @escaping (Bool) -> Void,
                powerOff: @escaping () -> Void) {
        self.sleepTypeS5 = UInt16(sleepTypeS5 & 0x7)
        self.clock = clock
        self.interrupt = interrupt
        self.powerOff = powerOff
        evaluated = clock()
    }

    public func read(offset: Int, size: Int) -> UInt32 {
        update()
        var value: UInt32 = 0
        for byte in 0..<size { value |= UInt32(readByte(offset + byte)) << (8 * byte) }
        return value
    }

    public func write(offset: Int, size: Int, value: UInt32) {
        update()
        switch (offset, size) {
        case (Self.statusOffset, 2), (Self.statusOffset, 4):
            // Write-one-to-clear; a 32-bit write reaches the enable register too.
            status &= ~UInt16(truncatingIfNeeded: value)
            if size == 4 { enable = UInt16(truncatingIfNeeded: value >> 16) }
        case (Self.enableOffset, 2):
            enable = UInt16(truncatingIfNeeded: value)
        case (Self.controlOffset, 2):
            writeControl(UInt16(truncatingIfNeeded: value))
        default:
            for byte in 0..<size { writeByte(offset + byte, UInt8(truncatingIfNeeded: value >> (8 * byte))) }
            return
        }
        updateInterrupt()
    }

    public func read(offset: Int) -> UInt8 {
        update()
        return readByte(offset)
    }

    public func write(offset: Int, value: UInt8) {
        update()
        writeByte(offset, value)
    }

    /// Brings TMR_STS up to the clock: set if the timer's bit 31 changed
    /// since the last look.
    public func update() {
        let now = clock()
        guard now > evaluated else { return }
        if Self.ticks(at: now) / Self.timerStatusTicks != Self.ticks(at: evaluated) / Self.timerStatusTicks {
            status |= Self.timerStatus
        }
        evaluated = now
        updateInterrupt()
    }

    /// When TMR_STS next sets with TMR_EN on (clock nanoseconds), or nil
    /// while the timer's event is off or the SCI is already high.
    public var nextEventTime: UInt64? {
        guard enable & Self.timerStatus != 0, !level else { return nil }
        let next = (Self.ticks(at: evaluated) / Self.timerStatusTicks + 1) * Self.timerStatusTicks
        // The first nanosecond at which the tick count reaches `next`.
        let (high, low) = next.multipliedFullWidth(by: 1_000_000_000)
        let (quotient, remainder) = Self.timerFrequency.dividingFullWidth((high, low))
        return quotient + (remainder == 0 ? 0 : 1)
    }

    /// The PM timer's ticks at clock time `nanoseconds`, before truncation to 32 bits.
    static func ticks(at nanoseconds: UInt64) -> UInt64 {
        let (high, low) = nanoseconds.multipliedFullWidth(by: timerFrequency)
        return UInt64(1_000_000_000).dividingFullWidth((high, low)).quotient
    }

    /// The host pressed the power button: the guest's ACPI driver sees
    /// PWRBTN_STS (and an SCI if it enabled the event) and shuts down.
    public func pressPowerButton() {
        status |= Self.powerButtonStatus
        updateInterrupt()
    }

    private var timer: UInt32 { UInt32(truncatingIfNeeded: Self.ticks(at: clock())) }

    private func readByte(_ offset: Int) -> UInt8 {
        switch offset {
        case 0, 1: UInt8(truncatingIfNeeded: status >> (8 * offset))
        case 2, 3: UInt8(truncatingIfNeeded: enable >> (8 * (offset - 2)))
        case 4, 5: UInt8(truncatingIfNeeded: control >> (8 * (offset - 4)))
        case 8...11: UInt8(truncatingIfNeeded: timer >> (8 * (offset - 8)))
        default: 0xff
        }
    }

    private func writeByte(_ offset: Int, _ value: UInt8) {
        switch offset {
        case 0, 1: status &= ~(UInt16(value) << (8 * offset))
        case 2: enable = enable & 0xff00 | UInt16(value)
        case 3: enable = enable & 0x00ff | UInt16(value) << 8
        case 4: writeControl(control & 0xff00 | UInt16(value))
        case 5: writeControl(control & 0x00ff | UInt16(value) << 8)
        default: break
        }
        updateInterrupt()
    }

    private func writeControl(_ value: UInt16) {
        let sleepType = value >> 10 & 0x7
        // SLP_EN is write-only: it triggers the transition and reads back as 0.
        control = value & ~Self.sleepEnable
        if value & Self.sleepEnable != 0, sleepType == sleepTypeS5 {
            powerOff()
        }
    }

    private func updateInterrupt() {
        let asserted = status & enable & (Self.timerStatus | Self.powerButtonStatus) != 0
        if asserted != level {
            level = asserted
            interrupt(asserted)
        }
    }
}
