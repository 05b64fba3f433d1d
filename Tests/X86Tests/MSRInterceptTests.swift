import Testing
@testable import X86

/// RDMSR and WRMSR handed to the CPU's owner (`interceptsMSRs`): the exit,
/// where RIP waits, and what `completeMSRAccess` does (Intel SDM: RDMSR
/// loads EDX:EAX, zero-extending both in 64-bit mode; a failed access is #GP(0)).
struct MSRInterceptTests {
    static let rdmsr: [UInt8] = [0x0F, 0x32, 0xF4]  // rdmsr; hlt
    static let wrmsr: [UInt8] = [0x0F, 0x30, 0xF4]  // wrmsr; hlt

    @Test func anInterceptedRDMSRWaitsAtTheInstructionUntilCompleted() {
        let m = Machine(.long64, code: Self.rdmsr)
        m.cpu.interceptsMSRs = true
        m[.rcx] = 0xFFFF_FFFF_0000_0174  // only ECX selects
        m[.rax] = 0xFFFF_FFFF_FFFF_FFFF
        #expect(m.run() == .msr(MSRAccessExit(index: 0x174, isWrite: false, value: 0)))
        #expect(m.cpu.state.rip == Machine.codeAddress)
        #expect(m.cpu.hasWaitingMSRAccess)
        #expect(m.cpu.completeMSRAccess(0x1122_3344_5566_7788) == nil)
        #expect(m[.rax] == 0x5566_7788)
        #expect(m[.rdx] == 0x1122_3344)
        #expect(m.cpu.state.rip == Machine.codeAddress + 2)
        #expect(!m.cpu.hasWaitingMSRAccess)
        #expect(m.run() == .halt)
    }

    @Test func anInterceptedWRMSRCarriesEDXEAXAndLeavesTheMSRToTheOwner() {
        let m = Machine(.real, code: Self.wrmsr)
        m.cpu.interceptsMSRs = true
        m[.rcx] = 0x174
        m[.rdx] = 0xAAAA_0000_0000_0001
        m[.rax] = 0xBBBB_0000_0000_0002
        #expect(m.run() == .msr(MSRAccessExit(index: 0x174, isWrite: true, value: 0x1_0000_0002)))
        #expect(m.cpu.completeMSRAccess(0) == nil)
        #expect(m.cpu.state.rip == Machine.codeAddress + 2)
        #expect(m.cpu.readMSR(0x174) == 0)
        #expect(m[.rax] == 0xBBBB_0000_0000_0002)
    }

    /// A refused access raises #GP(0) at the instruction, through the IVT in real mode.
    @Test func aRefusedAccessRaisesGPThroughTheIVT() {
        let m = Machine(.real, code: Self.rdmsr)
        m.cpu.deliversExceptions = true
        m.cpu.interceptsMSRs = true
        m.write([0x00, 0x20, 0x00, 0x00], at: 13 * 4)  // IVT 13: 0000:2000
        m.write([0xF4], at: 0x2000)
        #expect(m.run() == .msr(MSRAccessExit(index: 0, isWrite: false, value: 0)))
        #expect(m.cpu.completeMSRAccess(nil) == nil)
        #expect(m.cpu.state.rip == 0x2000)
        #expect(m.load64(0x8000 - 6) & 0xFFFF == Machine.codeAddress)  // the pushed IP: the RDMSR
        #expect(m.run() == .halt)
    }

    @Test func aRefusedAccessIsAnExceptionWhenTheCPUDoesNotDeliverThem() {
        let m = Machine(.real, code: Self.wrmsr)
        m.cpu.interceptsMSRs = true
        _ = m.run()
        #expect(m.cpu.completeMSRAccess(nil) == .exception(vector: 13, errorCode: 0))
        #expect(m.cpu.state.rip == Machine.codeAddress)
    }

    /// The privilege check comes before the intercept, as it comes before a VM exit.
    @Test func RDMSRAtCPL3RaisesGPWithoutAnExit() {
        let m = Machine(.protected32, code: Self.rdmsr)
        m.cpu.interceptsMSRs = true
        m.cpu.state[.cs] = SegmentRegister(selector: 0x1B, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC0FB)
        m.cpu.state[.ss] = SegmentRegister(selector: 0x23, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC0F3)
        #expect(m.run() == .exception(vector: 13, errorCode: 0))
        #expect(!m.cpu.hasWaitingMSRAccess)
    }

    @Test func withoutTheInterceptTheCPUsOwnMSRsAnswer() {
        let m = Machine(.real, code: Self.rdmsr)
        m[.rcx] = 0x277  // PAT
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x0007_0406)
    }

    @Test func completingWithNothingWaitingDoesNothing() {
        let m = Machine(.real, code: Self.rdmsr)
        m[.rax] = 5
        #expect(m.cpu.completeMSRAccess(1) == nil)
        #expect(m[.rax] == 5)
        #expect(m.cpu.state.rip == Machine.codeAddress)
    }
}
