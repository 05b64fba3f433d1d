import Foundation
import GuestMemory
import KVM

/// A VM with 64 KiB of RAM at guest-physical 0 and one vCPU in real mode
/// about to run `code` at 0x1000 — the smallest guest that exercises
/// exits, on any backend.
public struct RealModeGuest {
    public static let codeAddress: UInt64 = 0x1000
    public static let memorySize = 0x10000

    public let hypervisor: Hypervisor
    public let vm: VirtualMachine
    public let memory: GuestMemoryRegion
    public let vcpu: VCPU

    /// With `irqchip`, the VM gets the in-kernel PIC and IOAPIC before its vCPU.
    public init(hypervisor: Hypervisor, code: [UInt8], irqchip: Bool = false) throws {
        self.hypervisor = hypervisor
        vm = try hypervisor.createVM()
        if irqchip { try vm.createIrqchip() }
        memory = try GuestMemoryRegion(size: RealModeGuest.memorySize)
        try memory.write(code, at: Int(RealModeGuest.codeAddress))
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: memory)
        vcpu = try vm.createVCPU(id: 0)
        // Flat real mode: CS base 0, so RIP is the physical address.
        var special = try vcpu.specialRegisters()
        special.cs.base = 0
        special.cs.selector = 0
        try vcpu.setSpecialRegisters(special)
        var registers = Registers()
        registers.rip = RealModeGuest.codeAddress
        registers.rflags = 2
        registers.rsp = 0x8000
        try vcpu.setRegisters(registers)
    }

    public init(code: [UInt8], hypervisor: Hypervisor) throws {
        try self.init(hypervisor: hypervisor, code: code)
    }
}

extension VCPU {
    /// Runs the vCPU, kicking it if it has not exited within `seconds`, so
    /// that a guest that loops where the test expected an exit fails the
    /// test (with `.interrupted`) instead of hanging the run.
    public func runWithDeadline(seconds: Double = 5) throws -> VCPUExit {
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
