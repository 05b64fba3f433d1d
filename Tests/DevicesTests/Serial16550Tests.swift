import Testing
@testable import Devices

/// What a UART did with its interrupt line and output.
final class UARTRecorder {
    var level = false
    var edges: [Bool] = []
    var output: [UInt8] = []
}

/// A UART whose interrupt line and output are recorded.
struct UARTHarness {
    let recorder = UARTRecorder()
    let uart: Serial16550

    init() {
        let recorder = recorder
        uart = Serial16550(interrupt: { recorder.level = $0; recorder.edges.append($0) },
                           output: { recorder.output.append($0) })
    }

    var level: Bool { recorder.level }
    var edges: [Bool] { recorder.edges }
    var output: [UInt8] { recorder.output }

    func iir() -> UInt8 { uart.read(offset: Serial16550.interruptIdentificationOffset) }
}

@Suite struct Serial16550Tests {
    @Test func linuxScratchTestOnIERPasses() {
        let uart = UARTHarness().uart
        uart.write(offset: 1, value: 0)
        #expect(uart.read(offset: 1) & 0x0f == 0)
        uart.write(offset: 1, value: 0x0f)
        #expect(uart.read(offset: 1) & 0x0f == 0x0f)
        uart.write(offset: 1, value: 0)
    }

    @Test func scratchRegisterHoldsWhatIsWritten() {
        let uart = UARTHarness().uart
        for value: UInt8 in [0x55, 0xaa, 0x00, 0xff] {
            uart.write(offset: 7, value: value)
            #expect(uart.read(offset: 7) == value)
        }
    }

    @Test func linuxLoopbackTestSeesRTSAndOut2AsCTSAndDCD() {
        let uart = UARTHarness().uart
        uart.write(offset: 4, value: 0x10 | 0x0a)  // LOOP | RTS | OUT2
        #expect(uart.read(offset: 6) & 0xf0 == 0x90)
        uart.write(offset: 4, value: 0x10 | 0x05)  // LOOP | DTR | OUT1
        #expect(uart.read(offset: 6) & 0xf0 == 0x60)
    }

    @Test func loopbackSendsTransmittedBytesToReceiverNotOutput() {
        let harness = UARTHarness()
        harness.uart.write(offset: 4, value: 0x10)
        harness.uart.write(offset: 0, value: 0x42)
        #expect(harness.output.isEmpty)
        #expect(harness.uart.read(offset: 5) & 0x01 == 0x01)
        #expect(harness.uart.read(offset: 0) == 0x42)
        #expect(harness.uart.read(offset: 5) & 0x01 == 0)
    }

    @Test func fifoEnableReportsSixteen550AInIIRBits6And7() {
        let harness = UARTHarness()
        #expect(harness.iir() == 0x01)
        harness.uart.write(offset: 2, value: 0x01)
        #expect(harness.iir() >> 6 == 0b11)
        #expect(harness.iir() & 0x0f == 0x01)
        harness.uart.write(offset: 2, value: 0x00)
        #expect(harness.iir() >> 6 == 0)
    }

    @Test func divisorLatchIsBehindDLAB() {
        let uart = UARTHarness().uart
        uart.write(offset: 3, value: 0x83)
        uart.write(offset: 0, value: 0x01)
        uart.write(offset: 1, value: 0x00)
        #expect(uart.read(offset: 0) == 0x01)
        #expect(uart.read(offset: 1) == 0x00)
        #expect(uart.divisorLatch == 1)
        uart.write(offset: 3, value: 0x03)
        #expect(uart.read(offset: 1) == 0)  // IER, untouched by the latch writes
        #expect(uart.read(offset: 3) == 0x03)
    }

    @Test func transmittedBytesGoToOutputAndLSRShowsTransmitterEmpty() {
        let harness = UARTHarness()
        for byte in "hi\n".utf8 { harness.uart.write(offset: 0, value: byte) }
        #expect(harness.output == Array("hi\n".utf8))
        #expect(harness.uart.read(offset: 5) & 0x60 == 0x60)
    }

    @Test func enablingTHREInterruptRaisesItAndIIRReadClearsIt() {
        let harness = UARTHarness()
        harness.uart.write(offset: 1, value: 0x02)
        #expect(harness.level)
        #expect(harness.iir() & 0x0f == 0x02)
        #expect(!harness.level)
        #expect(harness.iir() & 0x0f == 0x01)
        // A write to THR empties it again at once: the interrupt comes back.
        harness.uart.write(offset: 0, value: 0x41)
        #expect(harness.level)
        #expect(harness.iir() & 0x0f == 0x02)
        // Disabling and re-enabling re-arms it, which Linux's THRE test checks.
        harness.uart.write(offset: 1, value: 0x00)
        #expect(!harness.level)
        harness.uart.write(offset: 1, value: 0x02)
        #expect(harness.level)
        #expect(harness.edges == [true, false, true, false, true])
    }

    @Test func receivedBytesRaiseRXInterruptAndReadBackInOrder() {
        let harness = UARTHarness()
        harness.uart.write(offset: 2, value: 0x01)  // FIFO on, trigger level 1
        harness.uart.write(offset: 1, value: 0x01)
        #expect(!harness.level)
        harness.uart.receive([0x61, 0x62])
        #expect(harness.level)
        #expect(harness.iir() & 0x0f == 0x04)
        #expect(harness.uart.read(offset: 0) == 0x61)
        #expect(harness.uart.read(offset: 5) & 0x01 == 0x01)
        #expect(harness.uart.read(offset: 0) == 0x62)
        #expect(!harness.level)
        #expect(harness.uart.read(offset: 5) & 0x01 == 0)
    }

    @Test func fifoTriggerLevelGivesRXDataElseCharacterTimeout() {
        let harness = UARTHarness()
        harness.uart.write(offset: 2, value: 0x01 | 0x80)  // FIFO on, trigger 8
        harness.uart.write(offset: 1, value: 0x01)
        harness.uart.receive(Array(repeating: 0x30, count: 5))
        #expect(harness.level)
        #expect(harness.iir() & 0x0f == 0x0c)
        harness.uart.receive(Array(repeating: 0x31, count: 3))
        #expect(harness.iir() & 0x0f == 0x04)
        for _ in 0..<8 { _ = harness.uart.read(offset: 0) }
        #expect(!harness.level)
        #expect(harness.iir() & 0x0f == 0x01)
    }

    @Test func fullFIFOSetsOverrunWhichRaisesLineStatusFirst() {
        let harness = UARTHarness()
        harness.uart.write(offset: 2, value: 0x01)
        harness.uart.write(offset: 1, value: 0x05)
        harness.uart.receive(Array(repeating: 0x7a, count: 17))
        #expect(harness.uart.receiveSpace == 0)
        #expect(harness.iir() & 0x0f == 0x06)
        #expect(harness.uart.read(offset: 5) & 0x02 == 0x02)
        // Reading LSR clears the error: RX data is next in priority.
        #expect(harness.iir() & 0x0f == 0x04)
        #expect(harness.uart.read(offset: 5) & 0x02 == 0)
    }

    @Test func withoutFIFOSecondByteOverrunsTheHoldingRegister() {
        let harness = UARTHarness()
        harness.uart.receive([0x61, 0x62])
        #expect(harness.uart.read(offset: 5) & 0x03 == 0x03)
        #expect(harness.uart.read(offset: 0) == 0x61)
        #expect(harness.uart.read(offset: 5) & 0x03 == 0)
    }

    @Test func fifoControlClearsReceiveFIFO() {
        let harness = UARTHarness()
        harness.uart.write(offset: 2, value: 0x01)
        harness.uart.receive([1, 2, 3])
        harness.uart.write(offset: 2, value: 0x03)
        #expect(harness.uart.read(offset: 5) & 0x01 == 0)
    }

    @Test func modemStatusChangeSetsDeltasAndInterrupt() {
        let harness = UARTHarness()
        harness.uart.write(offset: 1, value: 0x08)
        harness.uart.setModemInputs(0x30)  // DCD drops
        #expect(harness.level)
        #expect(harness.iir() & 0x0f == 0x00)
        #expect(harness.uart.read(offset: 6) == 0x38)
        #expect(!harness.level)
        #expect(harness.uart.read(offset: 6) == 0x30)
    }
}

/// The probe of Linux's 8250 driver (autoconfig() and autoconfig_16550a()
/// in drivers/tty/serial/8250/8250_port.c), step by step, with the
/// branches it takes for a 16550A.
@Suite struct Linux8250ProbeTests {
    @Test func probeIdentifiesSixteen550AWithoutEFROrSixteen750Features() {
        let uart = UARTHarness().uart
        // LCR 0xBF selects the EFR on a 16650; a 16550A has none.
        uart.write(offset: 3, value: 0xbf)
        uart.write(offset: 2, value: 0)  // EFR, or FCR here
        uart.write(offset: 3, value: 0)
        uart.write(offset: 2, value: 0x01)
        #expect(uart.read(offset: 2) >> 6 == 3, "IIR bits 6-7: FIFOs, a 16550A")
        // ST16C650V1 test: with DLAB set, offset 2 reads the IIR, not a zero EFR.
        uart.write(offset: 3, value: 0x80)
        #expect(uart.read(offset: 2) != 0)
        uart.write(offset: 3, value: 0xbf)
        #expect(uart.read(offset: 2) != 0)
        // XScale test: IER bit 6 (UUE) does not stick.
        uart.write(offset: 3, value: 0)
        uart.write(offset: 1, value: 0x40)
        #expect(uart.read(offset: 1) & 0x40 == 0)
        uart.write(offset: 1, value: 0)
        // 16750 test: the 64-byte FIFO bit (FCR bit 5) never shows in IIR bit 5.
        uart.write(offset: 2, value: 0x21)
        #expect(uart.read(offset: 2) >> 5 == 6)
        uart.write(offset: 3, value: 0x80)
        uart.write(offset: 2, value: 0x21)
        #expect(uart.read(offset: 2) >> 5 == 6)
        uart.write(offset: 3, value: 0)
    }
}
