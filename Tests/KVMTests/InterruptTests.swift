import CLinuxKVM
import Glibc
import GuestMemory
import KVMPlatform
import Testing
@testable import KVM

/// The in-kernel irqchip and PIT, interrupt injection, GSI routing, irqfd,
/// ioeventfd and coalesced MMIO on the host's /dev/kvm. The errno values
/// pinned here are the ones the kernel gives.
@Suite("Interrupts and notifications on the host's /dev/kvm", .enabled(if: HostKVM.isAvailable))
struct InterruptTests {
    /// A VM with the in-kernel irqchip.
    private func vmWithIrqchip() throws -> VirtualMachine {
        let vm = try HostKVM.hypervisor().createVM()
        try vm.createIrqchip()
        return vm
    }

    /// Sets the local APIC's software-enable bit (SVR bit 8), which is clear
    /// at reset, so that it accepts fixed interrupts.
    private func enableLocalAPIC(_ vcpu: VCPU) throws {
        var lapic = try vcpu.handle.get(.getLAPIC, kvm_lapic_state.self)
        let svrOffset = 0xF0
        withUnsafeMutableBytes(of: &lapic.regs) { $0[svrOffset + 1] |= 0x01 }
        try vcpu.handle.call(.setLAPIC, &lapic)
    }

    // MARK: Devices

    @Test func irqchipCanBeCreated() throws {
        let vm = try HostKVM.hypervisor().createVM()
        try vm.createIrqchip()
        #expect(try vm.irqchipState(.ioapic).chip == .ioapic)
    }

    @Test func secondIrqchipGivesEEXIST() throws {
        let vm = try vmWithIrqchip()
        let error = try #require(throws: KVMError.self) { try vm.createIrqchip() }
        #expect(error.errno == .fileExists)
    }

    @Test func irqchipAfterAVCPUGivesEINVAL() throws {
        let vm = try HostKVM.hypervisor().createVM()
        _ = try vm.createVCPU(id: 0)
        let error = try #require(throws: KVMError.self) { try vm.createIrqchip() }
        #expect(error.errno == .invalidArgument)
    }

    @Test func pitCanBeCreatedWithTheDummySpeaker() throws {
        let vm = try vmWithIrqchip()
        try vm.createPIT(flags: .speakerDummy)
        #expect(try vm.pitState().channels.count == 3)
    }

    @Test func secondPITGivesEEXIST() throws {
        let vm = try vmWithIrqchip()
        try vm.createPIT()
        let error = try #require(throws: KVMError.self) { try vm.createPIT() }
        #expect(error.errno == .fileExists)
    }

    @Test func pitWithoutIrqchipGivesENOENT() throws {
        let vm = try HostKVM.hypervisor().createVM()
        let error = try #require(throws: KVMError.self) { try vm.createPIT() }
        #expect(error.errno == .noSuchFileOrDirectory)
    }

    @Test func pitWithUnknownFlagIsAccepted() throws {
        // KVM_CREATE_PIT2 does not check kvm_pit_config.flags beyond the one it knows.
        let vm = try vmWithIrqchip()
        try vm.createPIT(flags: PITConfig(rawValue: 0x80))
        #expect(try vm.pitState().channels.count == 3)
    }

    @Test func pitStateWithoutAPITGivesENXIO() throws {
        let vm = try vmWithIrqchip()
        let error = try #require(throws: KVMError.self) { try vm.pitState() }
        #expect(error.errno == .noSuchAddressOrDevice)
    }

    // MARK: IRQ lines and MSIs

    @Test func irqLineWithoutIrqchipGivesENXIO() throws {
        let vm = try HostKVM.hypervisor().createVM()
        let error = try #require(throws: KVMError.self) { try vm.setIRQLine(4, level: true) }
        #expect(error.errno == .noSuchAddressOrDevice)
    }

    @Test func irqLineWithIrqchipSetsThePICRequest() throws {
        let vm = try vmWithIrqchip()
        try vm.setIRQLine(4, level: true)
        let master = try vm.irqchipState(.picMaster)
        let irr = master.bytes[1]
        #expect(irr & 0x10 != 0)
    }

    @Test func irqLineStatusReportsADeliveredEdge() throws {
        let vm = try vmWithIrqchip()
        #expect(try vm.setIRQLineStatus(4, level: true) == .delivered(1))
    }

    @Test func irqLineStatusReportsAnUnacknowledgedEdgeAsCoalesced() throws {
        let vm = try vmWithIrqchip()
        try vm.setIRQLine(4, level: true)
        try vm.setIRQLine(4, level: false)
        // The PIC's request bit for pin 4 is still set: no vCPU acknowledged it.
        #expect(try vm.setIRQLineStatus(4, level: true) == .coalesced)
    }

    @Test func raisingAnAlreadyHighLineIsReportedDeliveredAgain() throws {
        let vm = try vmWithIrqchip()
        try vm.setIRQLine(4, level: true)
        #expect(try vm.setIRQLineStatus(4, level: true) == .delivered(1))
    }

    @Test func msiToADisabledLocalAPICIsBlocked() throws {
        let vm = try vmWithIrqchip()
        _ = try vm.createVCPU(id: 0)
        #expect(try vm.signalMSI(address: 0xFEE0_0000, data: 0x30) == 0)
    }

    @Test func msiToAnEnabledLocalAPICIsDelivered() throws {
        let vm = try vmWithIrqchip()
        let vcpu = try vm.createVCPU(id: 0)
        try enableLocalAPIC(vcpu)
        #expect(try vm.signalMSI(address: 0xFEE0_0000, data: 0x30) == 1)
    }

    @Test func msiWithUnknownFlagGivesEINVAL() throws {
        let vm = try vmWithIrqchip()
        let error = try #require(throws: KVMError.self) {
            try vm.signalMSI(address: 0xFEE0_0000, data: 0x30, flags: MSIFlags(rawValue: 0x80))
        }
        #expect(error.errno == .invalidArgument)
    }

    @Test func msiWithoutIrqchipGivesEINVAL() throws {
        let vm = try HostKVM.hypervisor().createVM()
        let error = try #require(throws: KVMError.self) { try vm.signalMSI(address: 0xFEE0_0000, data: 0x30) }
        #expect(error.errno == .invalidArgument)
    }

    // MARK: GSI routing

    @Test func routingWithPinAndMSIEntriesIsAccepted() throws {
        let vm = try vmWithIrqchip()
        let vcpu = try vm.createVCPU(id: 0)
        try enableLocalAPIC(vcpu)
        try vm.setGSIRouting([
            .irqchip(gsi: 4, .picMaster, pin: 4),
            .irqchip(gsi: 4, .ioapic, pin: 4),
            .irqchip(gsi: 10, .picSlave, pin: 2),
            .msi(gsi: 30, address: 0xFEE0_0000, data: 0x31),
        ])
        // GSI 30 exists only through the new table, as an MSI to vCPU 0.
        #expect(try vm.setIRQLineStatus(30, level: true) == .delivered(1))
    }

    @Test func routingReplacesTheDefaultTable() throws {
        let vm = try vmWithIrqchip()
        #expect(try vm.setIRQLineStatus(5, level: true) == .delivered(1))
        try vm.setGSIRouting([.irqchip(gsi: 4, .picMaster, pin: 4)])
        #expect(try vm.setIRQLineStatus(6, level: true) == .ignored(-1))
    }

    @Test func routingMSIEntryWithADeviceIDIsAccepted() throws {
        let vm = try vmWithIrqchip()
        try vm.setGSIRouting([.msi(gsi: 30, address: 0xFEE0_0000, data: 0x31, deviceID: 7)])
    }

    @Test func routingEntryOfUnknownTypeGivesEINVAL() throws {
        let vm = try vmWithIrqchip()
        let error = try #require(throws: KVMError.self) {
            try vm.setGSIRouting([RoutingEntry(gsi: 1, route: .raw(type: 99, flags: 0, words: []))])
        }
        #expect(error.errno == .invalidArgument)
    }

    @Test func routingToAPICPinBeyondSevenGivesEINVAL() throws {
        let vm = try vmWithIrqchip()
        let error = try #require(throws: KVMError.self) { try vm.setGSIRouting([.irqchip(gsi: 1, .picMaster, pin: 8)]) }
        #expect(error.errno == .invalidArgument)
    }

    @Test func routingWithoutIrqchipGivesEINVAL() throws {
        let vm = try HostKVM.hypervisor().createVM()
        let error = try #require(throws: KVMError.self) { try vm.setGSIRouting([.irqchip(gsi: 1, .ioapic, pin: 1)]) }
        #expect(error.errno == .invalidArgument)
    }

    // MARK: irqfd

    @Test func irqfdCanBeRegisteredAndUnregistered() throws {
        let vm = try vmWithIrqchip()
        let eventFD = try EventFD()
        try vm.registerIRQFD(eventFD, gsi: 5)
        try vm.unregisterIRQFD(eventFD, gsi: 5)
    }

    @Test func signalledIrqfdRaisesItsPICLine() throws {
        let vm = try vmWithIrqchip()
        let eventFD = try EventFD()
        try vm.registerIRQFD(eventFD, gsi: 3)
        try eventFD.signal()
        // The kernel injects from a work item: give it a moment.
        var irr: UInt8 = 0
        for _ in 0..<100 where irr & 0x08 == 0 {
            irr = try vm.irqchipState(.picMaster).bytes[1]
            if irr & 0x08 == 0 { usleep(1000) }
        }
        #expect(irr & 0x08 != 0)
    }

    @Test func secondUnregisterOfAnIrqfdSucceeds() throws {
        let vm = try vmWithIrqchip()
        let eventFD = try EventFD()
        try vm.registerIRQFD(eventFD, gsi: 5)
        try vm.unregisterIRQFD(eventFD, gsi: 5)
        try vm.unregisterIRQFD(eventFD, gsi: 5)
    }

    @Test func irqfdRegisteredTwiceGivesEBUSY() throws {
        let vm = try vmWithIrqchip()
        let eventFD = try EventFD()
        try vm.registerIRQFD(eventFD, gsi: 5)
        let error = try #require(throws: KVMError.self) { try vm.registerIRQFD(eventFD, gsi: 6) }
        #expect(error.errno == .resourceBusy)
    }

    @Test func irqfdWithoutIrqchipGivesEINVAL() throws {
        let vm = try HostKVM.hypervisor().createVM()
        let eventFD = try EventFD()
        let error = try #require(throws: KVMError.self) { try vm.registerIRQFD(eventFD, gsi: 5) }
        #expect(error.errno == .invalidArgument)
    }

    @Test func vmKeepsARegisteredIrqfdAlive() throws {
        let vm = try vmWithIrqchip()
        var eventFD: EventFD? = try EventFD()
        weak let weakEventFD = eventFD
        try vm.registerIRQFD(try #require(eventFD), gsi: 5)
        eventFD = nil
        #expect(weakEventFD != nil)
        try vm.unregisterIRQFD(try #require(weakEventFD), gsi: 5)
        #expect(weakEventFD == nil)
    }

    @Test func irqfdWithResampleCanBeRegisteredAndUnregistered() throws {
        let vm = try vmWithIrqchip()
        let eventFD = try EventFD()
        let resample = try EventFD()
        try vm.registerIRQFD(eventFD, gsi: 10, resample: resample)
        try vm.unregisterIRQFD(eventFD, gsi: 10)
    }

    // MARK: ioeventfd

    @Test func ioeventfdTakesAPortWriteWithoutAnExit() throws {
        let guest = try RealModeGuest(code: [
            0xB0, 0x42,        // mov al, 0x42
            0xBA, 0x00, 0x03,  // mov dx, 0x300
            0xEE,              // out dx, al
            0xE6, 0xF1,        // out 0xf1, al
        ])
        let eventFD = try EventFD(nonBlocking: true)
        try guest.vm.registerIOEventFD(eventFD, address: 0x300, length: 1, space: .pio)
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0xF1, size: 1, value: 0x42)))
        #expect(eventFD.isSignaled())
        #expect(try eventFD.wait() == 1)
    }

    @Test func ioeventfdWithDatamatchFiresOnlyOnTheMatchingValue() throws {
        let guest = try RealModeGuest(code: [
            0xBA, 0x00, 0x03,  // mov dx, 0x300
            0xB0, 0x41,        // mov al, 0x41
            0xEE,              // out dx, al
            0xB0, 0x42,        // mov al, 0x42
            0xEE,              // out dx, al
            0xE6, 0xF1,        // out 0xf1, al
        ])
        let eventFD = try EventFD(nonBlocking: true)
        try guest.vm.registerIOEventFD(eventFD, address: 0x300, length: 1, space: .pio, datamatch: 0x42)
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0x300, size: 1, value: 0x41)))
        #expect(!eventFD.isSignaled())
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0xF1, size: 1, value: 0x42)))
        #expect(try eventFD.wait() == 1)
    }

    @Test func duplicateIOEventFDGivesEEXIST() throws {
        let vm = try HostKVM.hypervisor().createVM()
        let eventFD = try EventFD()
        try vm.registerIOEventFD(eventFD, address: 0x300, length: 2, space: .pio)
        let error = try #require(throws: KVMError.self) {
            try vm.registerIOEventFD(eventFD, address: 0x300, length: 2, space: .pio)
        }
        #expect(error.errno == .fileExists)
    }

    @Test func unregisteringAnUnknownIOEventFDGivesENOENT() throws {
        let vm = try HostKVM.hypervisor().createVM()
        let eventFD = try EventFD()
        let error = try #require(throws: KVMError.self) {
            try vm.unregisterIOEventFD(eventFD, address: 0xD000_0000, length: 4, space: .mmio)
        }
        #expect(error.errno == .noSuchFileOrDirectory)
    }

    @Test func unregisteredIOEventFDNoLongerTakesWrites() throws {
        let guest = try RealModeGuest(code: [
            0xB0, 0x42,        // mov al, 0x42
            0xBA, 0x00, 0x03,  // mov dx, 0x300
            0xEE,              // out dx, al
        ])
        let eventFD = try EventFD(nonBlocking: true)
        try guest.vm.registerIOEventFD(eventFD, address: 0x300, length: 1, space: .pio)
        try guest.vm.unregisterIOEventFD(eventFD, address: 0x300, length: 1, space: .pio)
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0x300, size: 1, value: 0x42)))
        #expect(!eventFD.isSignaled())
    }

    // MARK: Coalesced MMIO

    @Test func coalescedWritesAreQueuedInTheRingInsteadOfExiting() throws {
        let guest = try RealModeGuest(code: [
            0xB8, 0x00, 0x20,                    // mov ax, 0x2000
            0x8E, 0xD8,                          // mov ds, ax
            0xC6, 0x06, 0x10, 0x00, 0x5A,        // mov byte [0x10], 0x5a
            0xC7, 0x06, 0x20, 0x00, 0x34, 0x12,  // mov word [0x20], 0x1234
            0xE6, 0xF1,                          // out 0xf1, al
        ])
        try guest.vm.registerCoalescedMMIO(address: 0x20000, size: 0x1000)
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0xF1, size: 1, value: 0x00)))
        #expect(guest.vm.drainCoalescedMMIO(from: guest.vcpu) == [
            CoalescedWrite(address: 0x20010, length: 1, isPIO: false, value: 0x5A),
            CoalescedWrite(address: 0x20020, length: 2, isPIO: false, value: 0x1234),
        ])
        #expect(guest.vm.drainCoalescedMMIO(from: guest.vcpu).isEmpty)
    }

    @Test func fullRingMakesTheNextWriteExitAndDrainingWrapsAround() throws {
        let guest = try RealModeGuest(code: [
            0xB8, 0x00, 0x20,        // mov ax, 0x2000
            0x8E, 0xD8,              // mov ds, ax
            0xB9, 0xC8, 0x00,        // mov cx, 200
            0x88, 0x0E, 0x10, 0x00,  // again: mov [0x10], cl
            0xE2, 0xFA,              // loop again
            0xE6, 0xF1,              // out 0xf1, al
        ])
        try guest.vm.registerCoalescedMMIO(address: 0x20000, size: 0x1000)
        // KVM_COALESCED_MMIO_MAX is 170 slots, and one stays empty to tell a
        // full ring from an empty one: the 170th write exits.
        #expect(VirtualMachine.coalescedRingCapacity == 170)
        #expect(try guest.vcpu.run() == .mmio(MMIOAccess(address: 0x20010, length: 1, isWrite: true, data: (31, 0, 0, 0, 0, 0, 0, 0))))
        let first = guest.vm.drainCoalescedMMIO(from: guest.vcpu)
        #expect(first.map(\.value) == (32...200).reversed().map { UInt64($0) })
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0xF1, size: 1, value: 0x00)))
        let second = guest.vm.drainCoalescedMMIO(from: guest.vcpu)
        #expect(second.map(\.value) == (1...30).reversed().map { UInt64($0) })
        #expect(second.allSatisfy { $0.address == 0x20010 && $0.length == 1 })
    }

    @Test func writeOutsideTheCoalescedZoneExits() throws {
        let guest = try RealModeGuest(code: [
            0xB8, 0x00, 0x20,              // mov ax, 0x2000
            0x8E, 0xD8,                    // mov ds, ax
            0xC6, 0x06, 0x00, 0x10, 0x5A,  // mov byte [0x1000], 0x5a
        ])
        try guest.vm.registerCoalescedMMIO(address: 0x20000, size: 0x1000)
        let exit = try guest.vcpu.run()
        #expect(exit == .mmio(MMIOAccess(address: 0x21000, length: 1, isWrite: true, data: (0x5A, 0, 0, 0, 0, 0, 0, 0))))
        #expect(guest.vm.drainCoalescedMMIO(from: guest.vcpu).isEmpty)
    }

    @Test func coalescedPortWritesAreMarkedPIO() throws {
        let guest = try RealModeGuest(code: [
            0xB0, 0x77,        // mov al, 0x77
            0xBA, 0x00, 0x03,  // mov dx, 0x300
            0xEE,              // out dx, al
            0xE6, 0xF1,        // out 0xf1, al
        ])
        try #require(try guest.vm.checkExtension(.coalescedPio) > 0)
        try guest.vm.registerCoalescedMMIO(address: 0x300, size: 4, space: .pio)
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0xF1, size: 1, value: 0x77)))
        #expect(guest.vm.drainCoalescedMMIO(from: guest.vcpu) == [
            CoalescedWrite(address: 0x300, length: 1, isPIO: true, value: 0x77),
        ])
    }

    @Test func unregisteringAZoneThatWasNeverRegisteredSucceeds() throws {
        let vm = try HostKVM.hypervisor().createVM()
        try vm.unregisterCoalescedMMIO(address: 0x20000, size: 0x1000)
    }

    // MARK: Device state

    @Test func picStateRoundTrips() throws {
        let vm = try vmWithIrqchip()
        var state = try vm.irqchipState(.picSlave)
        state.picInterruptMask = 0xA5
        try vm.setIrqchipState(state)
        let read = try vm.irqchipState(.picSlave)
        #expect(read.picInterruptMask == 0xA5)
        #expect(read == state)
    }

    @Test func ioapicStartsWithEveryPinMasked() throws {
        let vm = try vmWithIrqchip()
        let state = try vm.irqchipState(.ioapic)
        #expect((0..<24).map { state.ioapicRedirection(pin: $0) } == Array(repeating: 0x1_0000, count: 24))
    }

    @Test func ioapicStateRoundTrips() throws {
        let vm = try vmWithIrqchip()
        var state = try vm.irqchipState(.ioapic)
        let entry: UInt64 = 0x0300_0000_0001_0035  // vector 0x35, masked, destination 3
        state.setIOAPICRedirection(pin: 5, entry)
        try vm.setIrqchipState(state)
        let read = try vm.irqchipState(.ioapic)
        #expect(read.ioapicRedirection(pin: 5) == entry)
        #expect(read == state)
    }

    @Test func irqchipStateOfUnknownChipGivesEINVAL() throws {
        let vm = try vmWithIrqchip()
        let error = try #require(throws: KVMError.self) { try vm.irqchipState(Irqchip(rawValue: 3)) }
        #expect(error.errno == .invalidArgument)
    }

    @Test func irqchipStateWithoutIrqchipGivesENXIO() throws {
        let vm = try HostKVM.hypervisor().createVM()
        let error = try #require(throws: KVMError.self) { try vm.irqchipState(.picMaster) }
        #expect(error.errno == .noSuchAddressOrDevice)
    }

    @Test func pitStateRoundTrips() throws {
        let vm = try vmWithIrqchip()
        try vm.createPIT()
        var state = try vm.pitState()
        state.channels[2].count = 0x1234
        state.channels[2].mode = 3
        state.channels[2].readWriteMode = 3
        try vm.setPITState(state)
        let read = try vm.pitState()
        #expect(read.channels[2].count == 0x1234)
        #expect(read.channels[2].mode == 3)
        #expect(read.channels[2].readWriteMode == 3)
        #expect(read.channels[0] == state.channels[0])
    }
}
