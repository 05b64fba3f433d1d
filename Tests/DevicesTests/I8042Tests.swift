import Testing
@testable import Devices

@Suite struct I8042Tests {
    @Test func selfTestAnswers0x55AndSetsSystemFlag() {
        let controller = I8042(reset: {})
        controller.write(offset: 4, value: 0xaa)
        #expect(controller.read(offset: 4) & 0x01 == 0x01)
        #expect(controller.read(offset: 0) == 0x55)
        #expect(controller.read(offset: 4) & 0x01 == 0)
        #expect(controller.read(offset: 4) & 0x04 == 0x04)
    }

    @Test func resetPulseCommandCallsReset() {
        var resets = 0
        let controller = I8042(reset: { resets += 1 })
        controller.write(offset: 4, value: 0xfe)
        #expect(resets == 1)
    }

    @Test func outputPortWriteWithBit0ClearResets() {
        var resets = 0
        let controller = I8042(reset: { resets += 1 })
        controller.write(offset: 4, value: 0xd1)
        controller.write(offset: 0, value: 0x03)
        #expect(resets == 0)
        controller.write(offset: 4, value: 0xd1)
        controller.write(offset: 0, value: 0x02)
        #expect(resets == 1)
    }

    @Test func commandByteReadsBackWhatWasWritten() {
        let controller = I8042(reset: {})
        controller.write(offset: 4, value: 0x20)
        #expect(controller.read(offset: 0) == 0x45)
        controller.write(offset: 4, value: 0x60)
        controller.write(offset: 0, value: 0x64)
        controller.write(offset: 4, value: 0x20)
        #expect(controller.read(offset: 0) == 0x64)
    }

    @Test func keyboardResetAcknowledgesAndInterrupts() {
        var levels: [Bool] = []
        let controller = I8042(keyboardInterrupt: { levels.append($0) }, reset: {})
        controller.write(offset: 0, value: 0xff)
        #expect(levels == [true])
        #expect(controller.read(offset: 0) == 0xfa)
        #expect(controller.read(offset: 0) == 0xaa)
        #expect(levels == [true, false])
    }

    @Test func auxLoopbackComesBackMarkedAux() {
        var aux: [Bool] = []
        let controller = I8042(auxInterrupt: { aux.append($0) }, reset: {})
        controller.write(offset: 4, value: 0x60)
        controller.write(offset: 0, value: 0x47)  // aux interrupts on
        controller.write(offset: 4, value: 0xd3)
        controller.write(offset: 0, value: 0x5a)
        #expect(controller.read(offset: 4) & 0x21 == 0x21)
        #expect(aux == [true])
        #expect(controller.read(offset: 0) == 0x5a)
        #expect(aux == [true, false])
    }

    /// With no mouse on the aux port, a byte for it must fail at once (0xFE
    /// with the timeout bit), not vanish: Linux's psmouse waited 4 s for an
    /// answer to its reset on every boot when it vanished.
    @Test func byteForTheAbsentMouseTimesOutAtOnce() {
        var aux: [Bool] = []
        let controller = I8042(auxInterrupt: { aux.append($0) }, reset: {})
        controller.write(offset: 4, value: 0x60)
        controller.write(offset: 0, value: 0x47)  // aux interrupts on
        controller.write(offset: 4, value: 0xd4)
        controller.write(offset: 0, value: 0xff)  // mouse reset
        #expect(controller.read(offset: 4) & 0x61 == 0x61)
        #expect(aux == [true])
        #expect(controller.read(offset: 0) == 0xfe)
        #expect(controller.read(offset: 4) & 0x61 == 0)
        #expect(aux == [true, false])
    }
}
