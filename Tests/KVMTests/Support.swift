import CLinuxKVM
import Foundation
import GuestMemory
@testable import KVM
import Testing
@_exported import HostKVMSupport  // HostKVM, for every file of this test target

extension HostKVM {
    static func hypervisor() throws -> Hypervisor { try Hypervisor(accelerator: .host) }
}

/// A VM with 64 KiB of RAM at guest-physical 0 and one vCPU in real mode
/// about to run `code` at 0x1000 — the smallest guest that exercises exits.
struct RealModeGuest {
    static let codeAddress: UInt64 = 0x1000
    static let memorySize = 0x10000

    let hypervisor: Hypervisor
    let vm: VirtualMachine
    let memory: GuestMemoryRegion
    let vcpu: VCPU

    init(code: [UInt8], hypervisor: Hypervisor? = nil) throws {
        self.hypervisor = try hypervisor ?? HostKVM.hypervisor()
        vm = try self.hypervisor.createVM()
        memory = try GuestMemoryRegion(size: RealModeGuest.memorySize)
        try memory.write(code, at: Int(RealModeGuest.codeAddress))
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: memory)
        vcpu = try vm.createVCPU(id: 0)
        try RealModeGuest.enterRealMode(vcpu, at: RealModeGuest.codeAddress)
    }

    /// Flat real mode: CS base 0, so RIP is the physical address.
    static func enterRealMode(_ vcpu: VCPU, at address: UInt64) throws {
        var sregs = try vcpu.handle.get(.getSregs, kvm_sregs.self)
        sregs.cs.base = 0
        sregs.cs.selector = 0
        try vcpu.handle.call(.setSregs, &sregs)
        var regs = kvm_regs()
        regs.rip = address
        regs.rflags = 2
        regs.rsp = 0x8000
        try vcpu.handle.call(.setRegs, &regs)
    }
}
