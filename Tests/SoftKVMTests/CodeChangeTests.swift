import Foundation
import GuestMemory
import Testing
@testable import KVM
@testable import SoftKVM

/// Guest code that user space changes between two KVM_RUNs runs as changed,
/// on SoftKVM (whose CPU caches decoded code) as on the host.
@Suite("Code changed by user space on both backends")
struct CodeChangeTests {
    /// 1000: mov al, 1; out 0x10, al; jmp 1000
    static let loop: [UInt8] = [0xB0, 0x01, 0xE6, 0x10, 0xEB, 0xFA]

    @Test(arguments: Backend.available)
    func writeBetweenTwoRunsIsRun(_ backend: Backend) throws {
        let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: CodeChangeTests.loop)
        #expect(try guest.vcpu.runWithDeadline() == .io(PortIO(direction: .out, port: 0x10, size: 1, value: 1)))
        try guest.memory.write([0xB0, 0x02], at: Int(RealModeGuest.codeAddress))
        #expect(try guest.vcpu.runWithDeadline() == .io(PortIO(direction: .out, port: 0x10, size: 1, value: 2)))
        #expect(try guest.vcpu.runWithDeadline() == .io(PortIO(direction: .out, port: 0x10, size: 1, value: 2)))
    }

    @Test(arguments: Backend.available)
    func newMemoryUnderTheCodeIsRun(_ backend: Backend) throws {
        let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: CodeChangeTests.loop)
        #expect(try guest.vcpu.runWithDeadline() == .io(PortIO(direction: .out, port: 0x10, size: 1, value: 1)))
        // Slot 0 again, backed by other memory that holds other code at the same address.
        let other = try GuestMemoryRegion(size: RealModeGuest.memorySize)
        try other.write([0xB0, 0x03] + CodeChangeTests.loop.dropFirst(2), at: Int(RealModeGuest.codeAddress))
        try guest.vm.removeMemoryRegion(slot: 0)
        try guest.vm.setMemoryRegion(slot: 0, guestAddress: 0, region: other)
        #expect(try guest.vcpu.runWithDeadline() == .io(PortIO(direction: .out, port: 0x10, size: 1, value: 3)))
    }
}
