import CLinuxKVM
import Foundation
import GuestMemory
@testable import KVM

/// A VM with 64 KiB of RAM at guest-physical 0 and one vCPU in real mode
/// about to run `code` at 0x1000 (as KVMTests/Support.swift's, on any backend).
struct RealModeGuest {
    static let codeAddress: UInt64 = 0x1000
    static let memorySize = 0x10000

    let hypervisor: Hypervisor
    let vm: VirtualMachine
    let memory: GuestMemoryRegion
    let vcpu: VCPU

    /// With `irqchip`, the VM gets the in-kernel PIC and IOAPIC before its vCPU.
    init(hypervisor: Hypervisor, code: [UInt8], irqchip: Bool = false) throws {
        self.hypervisor = hypervisor
        vm = try hypervisor.createVM()
        if irqchip { try vm.createIrqchip() }
        memory = try GuestMemoryRegion(size: RealModeGuest.memorySize)
        try memory.write(code, at: Int(RealModeGuest.codeAddress))
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: memory)
        vcpu = try vm.createVCPU(id: 0)
        var sregs = try vcpu.handle.get(.getSregs, kvm_sregs.self)
        sregs.cs.base = 0
        sregs.cs.selector = 0
        try vcpu.handle.call(.setSregs, &sregs)
        var regs = kvm_regs()
        regs.rip = RealModeGuest.codeAddress
        regs.rflags = 2
        regs.rsp = 0x8000
        try vcpu.handle.call(.setRegs, &regs)
    }

    init(code: [UInt8], hypervisor: Hypervisor) throws {
        try self.init(hypervisor: hypervisor, code: code)
    }
}

extension VCPU {
    /// Runs the vCPU, kicking it if it has not exited within `seconds`, so
    /// that a guest that loops where the test expected an exit fails the
    /// test (with `.interrupted`) instead of hanging the run.
    func runWithDeadline(seconds: Double = 5) throws -> VCPUExit {
        let kicker = self.kicker
        let done = DispatchSemaphore(value: 0)
        let watchdog = Thread {
            if done.wait(timeout: .now() + seconds) == .timedOut { kicker.kick() }
        }
        watchdog.start()
        defer { done.signal() }
        return try run()
    }
}
