import Foundation
import Devices
import GuestMemory
import KVM
import LinuxBoot
import Testing
@testable import VMM

/// Debian's cloud kernel, prepared by LinuxBoot and entered on the host's
/// /dev/kvm: its decompressor reads the zero page, finds the command line
/// through cmd_line_ptr, and programs the 16550 that `earlyprintk` names.
/// That is as far as a test can wait for: decompressing takes billions of
/// instructions on a kvm_pvm host. scripts/test installs the kernel.
@Suite(.enabled(if: HostKVM.isAvailable)) struct LinuxKernelEntryTests {
    static let memorySize = 256 << 20
    static let stubAddress = 0xf00
    static let serialBase: UInt16 = 0x3f8

    func kernelBytes() throws -> [UInt8] {
        guard let path = DebianCloudKernel.installedPath(), let data = FileManager.default.contents(atPath: path) else {
            throw KernelMissing()
        }
        return Array(data)
    }

    struct KernelMissing: Error, CustomStringConvertible {
        var description: String {
            DebianCloudKernel.installHint
        }
    }

    @Test func decompressorProgramsTheUARTItsCommandLineNames() throws {
        let memory = try GuestMemoryRegion(size: Self.memorySize)
        try memory.write([0xe6, 0xf0], at: Self.stubAddress)  // out 0xf0, al: the warm-up run
        let configuration = LinuxBootConfiguration(kernel: try kernelBytes(),
                                                   commandLine: "earlyprintk=serial,ttyS0,9600 console=ttyS0",
                                                   memorySize: UInt64(Self.memorySize))
        let boot = try LinuxBoot.prepare(configuration, in: memory)

        let hypervisor = try Hypervisor(accelerator: .host)
        let vm = try hypervisor.createVM()
        try vm.setTSSAddress(0xfffb_d000)
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: memory)
        let vcpu = try vm.createVCPU(id: 0)
        try vcpu.setCPUID(hypervisor.supportedCPUID())
        let warmUpExit = try vcpu.warmUp(at: UInt64(Self.stubAddress), port: 0xf0)
        try #require(warmUpExit == nil, "the warm-up run did not reach its out")
        try vcpu.applyBootState(boot.cpuState)

        let uart = Serial16550(interrupt: { _ in }, output: { _ in })
        var writes: [(port: UInt16, value: UInt8)] = []
        // early_serial_init() (arch/x86/boot/early_serial_console.c) makes
        // eight writes, the last one LCR = 8N1 after the divisor. On this
        // kvm_pvm host they come about 2 s after entry (longer when the
        // machine is busy), and the decompressed kernel's own early console
        // some 100 s later.
        while writes.count < 8 {
            let exit = try vcpu.runWithDeadline(seconds: 180)
            guard case .io(let io) = exit else {
                Issue.record("exit \(exit) at RIP 0x\(String(try vcpu.registers().rip, radix: 16)) before the UART was set up")
                return
            }
            let serial = (Self.serialBase..<Self.serialBase + 8).contains(io.port)
            if io.direction == .out {
                if serial {
                    uart.write(offset: Int(io.port - Self.serialBase), value: UInt8(truncatingIfNeeded: io.value))
                    writes.append((io.port, UInt8(truncatingIfNeeded: io.value)))
                }
            } else {
                try vcpu.setInput(serial ? UInt64(uart.read(offset: Int(io.port - Self.serialBase))) : 0xff)
            }
        }
        // 115200 / 9600 = 12: the baud rate came from our command line.
        #expect(uart.divisorLatch == 12)
        #expect(uart.read(offset: Serial16550.lineControlOffset) == 0x03)
        #expect(writes.map(\.port) == [0x3fb, 0x3f9, 0x3fa, 0x3fc, 0x3fb, 0x3f8, 0x3f9, 0x3fb])
        #expect(writes.map(\.value) == [0x03, 0x00, 0x00, 0x03, 0x83, 12, 0x00, 0x03])
    }
}
