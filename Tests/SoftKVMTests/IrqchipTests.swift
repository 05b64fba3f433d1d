import CLinuxKVM
import Glibc
@testable import KVM
import KVMPlatform
@testable import SoftKVM
import Synchronization
import Testing

/// A LAPIC side that records messages and accepts each one, as one enabled LAPIC would.
private final class RecordingBus: LocalAPICBus {
    let messages = Mutex<[APICMessage]>([])
    let accepted: Int32
    init(accepted: Int32 = 1) { self.accepted = accepted }
    func deliver(_ message: APICMessage) -> Int32 {
        messages.withLock { $0.append(message) }
        return accepted
    }
    func picOutputChanged(_ level: Bool) {}
    var acceptsPICInterrupts: Bool { true }
    var vectors: [UInt8] { messages.withLock { $0.map(\.vector) } }
}

/// The PIC pair programmed as a BIOS does: vectors 0x20 and 0x28, ICW4 with `icw4`.
private func initializedPICs(icw4: UInt8 = 0x01) -> PICPair {
    var pic = PICPair()
    for (base, vector, cascade) in [(UInt16(0x20), UInt8(0x20), UInt8(0x04)), (0xA0, 0x28, 0x02)] {
        pic.write(port: base, value: 0x11)  // ICW1: edge, cascade, ICW4 follows
        pic.write(port: base + 1, value: vector)  // ICW2
        pic.write(port: base + 1, value: cascade)  // ICW3
        pic.write(port: base + 1, value: icw4)  // ICW4
    }
    return pic
}

@Suite("The 8259 PIC pair alone")
struct PICTests {
    @Test func initializationSequenceSetsBaseAndEndsInNormalMode() {
        let pic = initializedPICs(icw4: 0x03)
        #expect(pic.pics[0].irqBase == 0x20)
        #expect(pic.pics[1].irqBase == 0x28)
        #expect(pic.pics[0].initState == 0)
        #expect(pic.pics[0].init4 == 1)
        #expect(pic.pics[0].autoEOI == 1)
        #expect(pic.pics[0].imr == 0)
    }

    @Test func thirdWordWithoutICW4EndsTheSequence() {
        var pic = PICPair()
        pic.write(port: 0x20, value: 0x10)
        pic.write(port: 0x21, value: 0x40)
        pic.write(port: 0x21, value: 0x04)
        #expect(pic.pics[0].initState == 0)
        pic.write(port: 0x21, value: 0xFF)  // Now OCW1.
        #expect(pic.read(port: 0x21) == 0xFF)
    }

    @Test func raisedPinGoesFromRequestToServiceToEnd() {
        var pic = initializedPICs()
        #expect(pic.setIRQ(4, source: 0, level: true) == 1)
        #expect(pic.pics[0].irr == 0x10)
        #expect(pic.output)
        #expect(pic.readIRQ() == 0x24)
        #expect(pic.pics[0].irr == 0)
        #expect(pic.pics[0].isr == 0x10)
        #expect(!pic.output)
        pic.write(port: 0x20, value: 0x20)  // Non-specific EOI.
        #expect(pic.pics[0].isr == 0)
        #expect(pic.acked == [4])
    }

    @Test func lowerPinNumberIsServedFirstAndBlocksLowerPriority() {
        var pic = initializedPICs()
        _ = pic.setIRQ(5, source: 0, level: true)
        _ = pic.setIRQ(3, source: 0, level: true)
        #expect(pic.readIRQ() == 0x23)
        // Pin 5 waits while 3 is in service.
        #expect(!pic.output)
        pic.write(port: 0x20, value: 0x20)
        #expect(pic.output)
        #expect(pic.readIRQ() == 0x25)
    }

    @Test func higherPriorityInterruptsOneInService() {
        var pic = initializedPICs()
        _ = pic.setIRQ(5, source: 0, level: true)
        #expect(pic.readIRQ() == 0x25)
        _ = pic.setIRQ(1, source: 0, level: true)
        #expect(pic.output)
        #expect(pic.readIRQ() == 0x21)
        #expect(pic.pics[0].isr == 0x22)
    }

    @Test func maskedPinIsIgnoredUntilUnmasked() {
        var pic = initializedPICs()
        pic.write(port: 0x21, value: 0x40)
        #expect(pic.setIRQ(6, source: 0, level: true) == -1)
        #expect(pic.pics[0].irr == 0x40)
        #expect(!pic.output)
        pic.write(port: 0x21, value: 0x00)
        #expect(pic.output)
    }

    @Test func edgeIsCountedOncePerRisingEdge() {
        var pic = initializedPICs()
        #expect(pic.setIRQ(4, source: 0, level: true) == 1)
        #expect(pic.setIRQ(4, source: 0, level: false) == 1)
        #expect(pic.setIRQ(4, source: 0, level: true) == 0)  // Coalesced with the pending one.
    }

    @Test func levelTriggeredPinStaysRequestedAfterAcknowledge() {
        var pic = initializedPICs()
        pic.write(port: 0x4D0, value: 0xFF)
        #expect(pic.read(port: 0x4D0) == 0xF8)  // Pins 0-2 cannot be level.
        _ = pic.setIRQ(3, source: 0, level: true)
        #expect(pic.readIRQ() == 0x23)
        #expect(pic.pics[0].irr == 0x08)
        pic.write(port: 0x20, value: 0x20)
        #expect(pic.output)  // Re-triggered: the line is still high.
        _ = pic.setIRQ(3, source: 0, level: false)
        #expect(pic.pics[0].irr == 0)
        #expect(!pic.output)
    }

    @Test func slaveRequestCascadesThroughMasterPinTwo() {
        var pic = initializedPICs()
        _ = pic.setIRQ(9, source: 0, level: true)
        #expect(pic.pics[1].irr == 0x02)
        #expect(pic.pics[0].irr == 0x04)
        #expect(pic.output)
        #expect(pic.readIRQ() == 0x29)
        #expect(pic.pics[0].isr == 0x04)
        #expect(pic.pics[1].isr == 0x02)
    }

    @Test func autoEOILeavesNothingInService() {
        var pic = initializedPICs(icw4: 0x03)
        _ = pic.setIRQ(4, source: 0, level: true)
        #expect(pic.readIRQ() == 0x24)
        #expect(pic.pics[0].isr == 0)
        #expect(pic.acked == [4])
    }

    @Test func readRegisterSelectChoosesISROrIRR() {
        var pic = initializedPICs()
        _ = pic.setIRQ(4, source: 0, level: true)
        _ = pic.readIRQ()
        _ = pic.setIRQ(6, source: 0, level: true)
        pic.write(port: 0x20, value: 0x0B)
        #expect(pic.read(port: 0x20) == 0x10)
        pic.write(port: 0x20, value: 0x0A)
        #expect(pic.read(port: 0x20) == 0x40)
    }

    @Test func pollCommandAcknowledgesTheBestRequest() {
        var pic = initializedPICs()
        _ = pic.setIRQ(6, source: 0, level: true)
        pic.write(port: 0x20, value: 0x0C)
        #expect(pic.read(port: 0x20) == 6)
        #expect(pic.pics[0].irr == 0)
        #expect(pic.pics[0].isr == 0)
        pic.write(port: 0x20, value: 0x0C)
        #expect(pic.read(port: 0x20) == 7)  // Nothing pending.
    }

    @Test func specificEOIAndRotationMoveThePriority() {
        var pic = initializedPICs()
        _ = pic.setIRQ(2, source: 0, level: true)
        _ = pic.readIRQ()
        pic.write(port: 0x20, value: 0xE2)  // Specific EOI of 2 with rotation.
        #expect(pic.pics[0].isr == 0)
        #expect(pic.pics[0].priorityAdd == 3)
        _ = pic.setIRQ(1, source: 0, level: true)
        _ = pic.setIRQ(3, source: 0, level: true)
        #expect(pic.readIRQ() == 0x23)  // 3 now ranks above 1.
        pic.write(port: 0x20, value: 0xC6)  // Set priority: 7 lowest.
        #expect(pic.pics[0].priorityAdd == 7)
    }

    @Test func specialMaskIsStoredAsTheKernelDoes() {
        var pic = initializedPICs()
        pic.write(port: 0x20, value: 0x68)
        #expect(pic.pics[0].specialMask == 1)
        pic.write(port: 0x20, value: 0x48)
        #expect(pic.pics[0].specialMask == 0)
    }

    @Test func reinitializationEndsEdgeRequestsInServiceOnlyWhenAVCPUTakesThePIC() {
        for accepts in [false, true] {
            var pic = initializedPICs()
            _ = pic.setIRQ(4, source: 0, level: true)
            _ = pic.readIRQ()
            _ = pic.setIRQ(4, source: 0, level: false)
            _ = pic.setIRQ(4, source: 0, level: true)  // A second edge, pending behind the first.
            pic.acked = []
            pic.write(port: 0x20, value: 0x11, anyVCPUAcceptsPIC: accepts)
            #expect(pic.pics[0].irr == 0)
            #expect(pic.pics[0].isr == (accepts ? 0 : 0x10))
            #expect(pic.acked == (accepts ? [4] : []))
        }
    }

    @Test func acknowledgeWithNothingPendingIsSpurious() {
        var pic = initializedPICs()
        #expect(pic.readIRQ() == 0x27)
    }

    @Test func lineStaysHighWhileAnySourceHoldsIt() {
        var pic = initializedPICs()
        pic.write(port: 0x4D0, value: 0x10)
        _ = pic.setIRQ(4, source: 0, level: true)
        _ = pic.setIRQ(4, source: 1, level: true)
        _ = pic.setIRQ(4, source: 0, level: false)
        #expect(pic.pics[0].irr == 0x10)
        _ = pic.setIRQ(4, source: 1, level: false)
        #expect(pic.pics[0].irr == 0)
    }
}

@Suite("The IOAPIC alone")
struct IOAPICTests {
    private func select(_ ioapic: inout IOAPIC, _ register: UInt32, bus: LocalAPICBus) {
        ioapic.write(address: IOAPIC_DEFAULT_BASE_ADDRESS, length: 4, value: UInt64(register), bus: bus)
    }

    private func program(_ ioapic: inout IOAPIC, pin: Int, _ entry: UInt64, bus: LocalAPICBus) {
        select(&ioapic, 0x10 + 2 * UInt32(pin), bus: bus)
        ioapic.write(address: IOAPIC_DEFAULT_BASE_ADDRESS + 0x10, length: 4, value: entry & 0xFFFF_FFFF, bus: bus)
        select(&ioapic, 0x11 + 2 * UInt32(pin), bus: bus)
        ioapic.write(address: IOAPIC_DEFAULT_BASE_ADDRESS + 0x10, length: 4, value: entry >> 32, bus: bus)
    }

    @Test func versionRegisterGivesTwentyFourPins() {
        let bus = RecordingBus()
        var ioapic = IOAPIC()
        select(&ioapic, 1, bus: bus)
        #expect(ioapic.read(address: IOAPIC_DEFAULT_BASE_ADDRESS + 0x10, length: 4) == 0x0017_0011)
        #expect(ioapic.read(address: IOAPIC_DEFAULT_BASE_ADDRESS, length: 4) == 1)
    }

    @Test func redirectionEntryIsWrittenAndReadThroughTheWindow() {
        let bus = RecordingBus()
        var ioapic = IOAPIC()
        program(&ioapic, pin: 5, 0x0300_0000_0001_0035, bus: bus)
        select(&ioapic, 0x1A, bus: bus)
        #expect(ioapic.read(address: IOAPIC_DEFAULT_BASE_ADDRESS + 0x10, length: 4) == 0x0001_0035)
        select(&ioapic, 0x1B, bus: bus)
        #expect(ioapic.read(address: IOAPIC_DEFAULT_BASE_ADDRESS + 0x10, length: 4) == 0x0300_0000)
        select(&ioapic, 0x10 + 2 * 24, bus: bus)
        #expect(ioapic.read(address: IOAPIC_DEFAULT_BASE_ADDRESS + 0x10, length: 4) == 0xFFFF_FFFF)
    }

    @Test func remoteIRRCannotBeWrittenByTheGuest() {
        let bus = RecordingBus()
        var ioapic = IOAPIC()
        program(&ioapic, pin: 3, 0x1_C030, bus: bus)  // Level, remote IRR asked, masked.
        #expect(!ioapic.redirectionTable[3].remoteIRR)
    }

    @Test func edgePinDeliversOncePerEdge() {
        let bus = RecordingBus()
        var ioapic = IOAPIC()
        program(&ioapic, pin: 4, 0x30, bus: bus)
        #expect(ioapic.setIRQ(4, source: 0, level: true, lineStatus: false, bus: bus) == 1)
        #expect(ioapic.setIRQ(4, source: 0, level: true, lineStatus: false, bus: bus) == 0)
        _ = ioapic.setIRQ(4, source: 0, level: false, lineStatus: false, bus: bus)
        #expect(ioapic.setIRQ(4, source: 0, level: true, lineStatus: false, bus: bus) == 1)
        #expect(bus.vectors == [0x30, 0x30])
    }

    @Test func maskedPinDeliversNothing() {
        let bus = RecordingBus()
        var ioapic = IOAPIC()
        #expect(ioapic.setIRQ(4, source: 0, level: true, lineStatus: false, bus: bus) == -1)
        #expect(bus.vectors.isEmpty)
        #expect(ioapic.irr == 0x10)
    }

    @Test func levelPinWaitsForEOIAndIsDeliveredAgainWhileHigh() {
        let bus = RecordingBus()
        var ioapic = IOAPIC()
        program(&ioapic, pin: 9, 0x8041, bus: bus)
        #expect(ioapic.setIRQ(9, source: 0, level: true, lineStatus: false, bus: bus) == 1)
        #expect(ioapic.redirectionTable[9].remoteIRR)
        #expect(ioapic.setIRQ(9, source: 0, level: true, lineStatus: false, bus: bus) == -1)
        ioapic.endOfInterrupt(vector: 0x41, bus: bus)
        #expect(bus.vectors == [0x41, 0x41])  // The line was still high.
        _ = ioapic.setIRQ(9, source: 0, level: false, lineStatus: false, bus: bus)
        ioapic.endOfInterrupt(vector: 0x41, bus: bus)
        #expect(bus.vectors == [0x41, 0x41])
        #expect(!ioapic.redirectionTable[9].remoteIRR)
        #expect(ioapic.acked == [9, 9])
    }

    @Test func unmaskingAPendingLevelPinDeliversIt() {
        let bus = RecordingBus()
        var ioapic = IOAPIC()
        program(&ioapic, pin: 9, 0x1_8041, bus: bus)
        _ = ioapic.setIRQ(9, source: 0, level: true, lineStatus: false, bus: bus)
        #expect(bus.vectors.isEmpty)
        program(&ioapic, pin: 9, 0x8041, bus: bus)
        #expect(bus.vectors == [0x41])
    }

    @Test func switchingToEdgeClearsRemoteIRR() {
        let bus = RecordingBus()
        var ioapic = IOAPIC()
        program(&ioapic, pin: 9, 0x8041, bus: bus)
        _ = ioapic.setIRQ(9, source: 0, level: true, lineStatus: false, bus: bus)
        #expect(ioapic.redirectionTable[9].remoteIRR)
        program(&ioapic, pin: 9, 0x0041, bus: bus)
        #expect(!ioapic.redirectionTable[9].remoteIRR)
    }

    @Test func messageCarriesTheEntryFields() {
        let bus = RecordingBus()
        var ioapic = IOAPIC()
        program(&ioapic, pin: 2, 0x0500_0000_0000_0951, bus: bus)  // Logical, lowest priority, vector 0x51, dest 5.
        _ = ioapic.setIRQ(2, source: 0, level: true, lineStatus: false, bus: bus)
        let message = bus.messages.withLock { $0.first }
        #expect(message == APICMessage(vector: 0x51, deliveryMode: 1, logicalDestination: true, levelTriggered: false, destination: 5))
    }
}

/// What the CPU will call, driven directly on SoftKVM (the CPU is not wired).
@Suite("SoftKVM's hooks for the CPU")
struct CPUHookTests {
    private func softVM(_ vm: VirtualMachine, _ hypervisor: Hypervisor) throws -> SoftVM {
        let backend = try #require(hypervisor.handle.backend as? SoftBackend)
        guard case .vm(let soft) = backend.lookup(vm.rawDescriptor) else { throw KVMError(errno: .badFileDescriptor, request: .createVM, message: "not a VM") }
        return soft
    }

    @Test func guestPICProgrammingShowsInKVMGetIrqchip() throws {
        let hypervisor = try Backend.soft.hypervisor()
        let vm = try hypervisor.createVM()
        try vm.createIrqchip()
        let irqchip = try #require(try softVM(vm, hypervisor).irqchip)
        for value: UInt8 in [0x11, 0x68, 0x04, 0x01] { irqchip.portWrite(value == 0x11 ? 0x20 : 0x21, value: value) }
        irqchip.portWrite(0x21, value: 0x01)  // OCW1: mask pin 0 only.
        let state = try vm.irqchipState(.picMaster)
        #expect(state.bytes[5] == 0x68)  // irq_base
        #expect(state.bytes[2] == 0x01)  // imr
        try vm.setIRQLine(1, level: true)
        #expect(irqchip.picOutput)
        #expect(irqchip.picAcknowledge() == 0x69)
        #expect(try vm.irqchipState(.picMaster).bytes[3] == 0x02)  // isr
    }

    @Test func ioapicPageIsReachableThroughTheIrqchip() throws {
        let hypervisor = try Backend.soft.hypervisor()
        let vm = try hypervisor.createVM()
        try vm.createIrqchip()
        let irqchip = try #require(try softVM(vm, hypervisor).irqchip)
        #expect(irqchip.handlesMMIO(0xFEC0_0010))
        #expect(!irqchip.handlesMMIO(0xFEC0_0100))
        irqchip.mmioWrite(0xFEC0_0000, length: 4, value: 0x14)
        irqchip.mmioWrite(0xFEC0_0010, length: 4, value: 0x33)
        #expect(try vm.irqchipState(.ioapic).ioapicRedirection(pin: 2) == 0x33)
    }

    @Test func ioeventfdTakesMatchingWritesOnly() throws {
        let hypervisor = try Backend.soft.hypervisor()
        let vm = try hypervisor.createVM()
        let soft = try softVM(vm, hypervisor)
        let port = try EventFD(nonBlocking: true)
        let mmio = try EventFD(nonBlocking: true)
        let any = try EventFD(nonBlocking: true)
        try vm.registerIOEventFD(port, address: 0x300, length: 1, space: .pio, datamatch: 0x42)
        try vm.registerIOEventFD(mmio, address: 0xD000_0000, length: 4, space: .mmio)
        try vm.registerIOEventFD(any, address: 0xD000_1000, length: 0, space: .mmio)
        let write = { (bus: IOBus, address: UInt64, length: Int, value: UInt64) in
            soft.ioeventfds.withLock { $0.write(bus, address: address, length: length, value: value) }
        }
        #expect(!write(.pio, 0x300, 1, 0x41))
        #expect(!port.isSignaled())
        #expect(write(.pio, 0x300, 1, 0x42))
        #expect(try port.wait() == 1)
        #expect(!write(.mmio, 0x300, 1, 0x42))  // Another space.
        #expect(!write(.mmio, 0xD000_0000, 2, 7))  // Another length.
        #expect(write(.mmio, 0xD000_0000, 4, 7))
        #expect(write(.mmio, 0xD000_1000, 8, 7))
        #expect(try mmio.wait() == 1)
        #expect(try any.wait() == 1)
        try vm.unregisterIOEventFD(mmio, address: 0xD000_0000, length: 4, space: .mmio)
        #expect(!write(.mmio, 0xD000_0000, 4, 7))
    }

    @Test func coalescedWritesFillTheRingSharedByEveryVCPU() throws {
        let hypervisor = try Backend.soft.hypervisor()
        let vm = try hypervisor.createVM()
        let soft = try softVM(vm, hypervisor)
        let first = try vm.createVCPU(id: 0)
        let second = try vm.createVCPU(id: 1)
        try vm.registerCoalescedMMIO(address: 0x20000, size: 0x1000)
        try vm.registerCoalescedMMIO(address: 0x300, size: 4, space: .pio)
        #expect(soft.coalesced.write(address: 0x20010, length: 1, value: 0x5A, pio: false))
        #expect(soft.coalesced.write(address: 0x300, length: 2, value: 0x1234, pio: true))
        #expect(!soft.coalesced.write(address: 0x21000, length: 1, value: 1, pio: false))  // Outside the zone.
        #expect(!soft.coalesced.write(address: 0x20FFF, length: 2, value: 1, pio: false))  // Crosses its end.
        #expect(!soft.coalesced.write(address: 0x20010, length: 1, value: 1, pio: true))  // Not a PIO zone.
        #expect(vm.drainCoalescedMMIO(from: second) == [
            CoalescedWrite(address: 0x20010, length: 1, isPIO: false, value: 0x5A),
            CoalescedWrite(address: 0x300, length: 2, isPIO: true, value: 0x1234),
        ])
        // The ring keeps one slot free: 169 writes fit, the 170th exits.
        let capacity = VirtualMachine.coalescedRingCapacity
        let accepted = (1...capacity).filter { soft.coalesced.write(address: 0x20010, length: 1, value: UInt64($0), pio: false) }
        #expect(accepted.count == capacity - 1)
        #expect(vm.drainCoalescedMMIO(from: first).map(\.value) == (1..<capacity).map { UInt64($0) })
        #expect(soft.coalesced.write(address: 0x20010, length: 1, value: 1, pio: false))
        try vm.unregisterCoalescedMMIO(address: 0x20000, size: 0x1000)
        #expect(!soft.coalesced.write(address: 0x20010, length: 1, value: 1, pio: false))
    }

    @Test func resampledIrqfdIsLoweredAndSignalledAtTheGuestsEOI() throws {
        let hypervisor = try Backend.soft.hypervisor()
        let vm = try hypervisor.createVM()
        try vm.createIrqchip()
        let irqchip = try #require(try softVM(vm, hypervisor).irqchip)
        let eventFD = try EventFD()
        let resample = try EventFD(nonBlocking: true)
        try vm.registerIRQFD(eventFD, gsi: 4, resample: resample)
        try eventFD.signal()
        var output = false
        for _ in 0..<500 where !output {
            output = irqchip.picOutput
            if !output { usleep(1000) }
        }
        #expect(output)
        #expect(irqchip.picAcknowledge() == 4)  // irq_base is 0 before the guest sets it.
        #expect(!resample.isSignaled())
        irqchip.portWrite(0x20, value: 0x20)
        #expect(resample.isSignaled())
        // The resampler lowered the line, so a new edge raises it again.
        #expect(try vm.setIRQLineStatus(4, level: true) == .delivered(1))
    }

    @Test func unmaskingThroughTheIOAPICPageSignalsTheResampler() throws {
        let hypervisor = try Backend.soft.hypervisor()
        let vm = try hypervisor.createVM()
        try vm.createIrqchip()
        let irqchip = try #require(try softVM(vm, hypervisor).irqchip)
        let eventFD = try EventFD()
        let resample = try EventFD(nonBlocking: true)
        try vm.registerIRQFD(eventFD, gsi: 10, resample: resample)
        irqchip.mmioWrite(0xFEC0_0000, length: 4, value: 0x10 + 2 * 10)
        irqchip.mmioWrite(0xFEC0_0010, length: 4, value: 0x1_8041)  // Level, masked.
        try eventFD.signal()
        var irr: UInt8 = 0
        for _ in 0..<500 where irr & 0x04 == 0 {
            irr = try vm.irqchipState(.ioapic).bytes[17]  // irr bits 8-15
            if irr & 0x04 == 0 { usleep(1000) }
        }
        #expect(irr & 0x04 != 0)
        irqchip.mmioWrite(0xFEC0_0010, length: 4, value: 0x8041)  // Unmask.
        #expect(resample.isSignaled())
        #expect(try vm.irqchipState(.ioapic).bytes[17] & 0x04 == 0)
    }

    @Test func irqfdThreadEndsWithTheVM() throws {
        weak var irqfds: IRQFDs?
        do {
            let hypervisor = try Backend.soft.hypervisor()
            let vm = try hypervisor.createVM()
            try vm.createIrqchip()
            let eventFD = try EventFD()
            try vm.registerIRQFD(eventFD, gsi: 5)
            irqfds = try softVM(vm, hypervisor).irqfds.withLock { $0 }
            #expect(irqfds != nil)
        }
        // SoftVM's deinit joined the thread, which held the last other reference.
        #expect(irqfds == nil)
    }
}

@Suite("The IOAPIC and irqfd resamplers")
struct IOAPICResampleTests {
    @Test func unmaskingAPendingLevelPinAsksTheResamplerInsteadOfInjecting() throws {
        let bus = RecordingBus()
        var ioapic = IOAPIC()
        let window = IOAPIC_DEFAULT_BASE_ADDRESS + 0x10
        ioapic.write(address: IOAPIC_DEFAULT_BASE_ADDRESS, length: 4, value: 0x10 + 2 * 9, bus: bus)
        ioapic.write(address: window, length: 4, value: 0x1_8041, bus: bus)  // Level, masked.
        _ = ioapic.setIRQ(9, source: KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID, level: true, lineStatus: false, bus: bus)
        ioapic.write(address: window, length: 4, value: 0x8041, bus: bus, hasResampler: { $0 == 9 })
        #expect(bus.vectors.isEmpty)
        #expect(ioapic.irr & (1 << 9) == 0)
        #expect(ioapic.resampleNotified == [9])
    }
}
